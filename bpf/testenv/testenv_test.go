package testenv

import (
	"strings"
	"testing"
	"time"
)

// TestPairQuiet: an idle pair carries no packet at all once NewPair has
// returned. Without the quieting sysctls the kernel sends MLD reports
// (repeated at random within 1 s), DAD probes and router solicitations
// (the first within about 1 s of DAD) in this window.
func TestPairQuiet(t *testing.T) {
	a, b := NewPair(t)
	for _, h := range []*Host{a, b} {
		if out := h.Exec("ip", "-6", "addr", "show", "dev", h.Iface, "scope", "link"); strings.TrimSpace(out) != "" {
			t.Errorf("[%s] link-local address on %s:\n%s", h.Name, h.Iface, out)
		}
	}
	a0, b0 := PairCounters(a, b)
	time.Sleep(3 * time.Second) // the observation window itself
	a1, b1 := PairCounters(a, b)
	if a1 != a0 || b1 != b0 {
		t.Errorf("idle pair sent packets: veth-a %+v -> %+v, veth-b %+v -> %+v", a0, a1, b0, b1)
	}
}
