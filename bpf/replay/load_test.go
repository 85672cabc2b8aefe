package replay

import (
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/bpf"
	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// TestOpenReplayPrograms: a collector for the batch path loads the batch
// program only (and the clock), one for the per-packet path the live
// programs only.
func TestOpenReplayPrograms(t *testing.T) {
	testenv.RequireBPF(t)
	for _, set := range []bpf.ProgramSet{bpf.LoadReplay, bpf.LoadLive} {
		t0 := time.Now()
		c, err := bpf.Open(bpf.Options{EphemeralPorts: DefaultEphemeralPorts, Programs: set})
		if err != nil {
			t.Fatalf("programs %#x: %v", set, err)
		}
		t.Logf("programs %#x: Open %s", set, time.Since(t0))
		if c.ReplayLoaded() != (set == bpf.LoadReplay) || c.LiveLoaded() != (set == bpf.LoadLive) {
			t.Errorf("programs %#x: replay loaded %v, live loaded %v", set, c.ReplayLoaded(), c.LiveLoaded())
		}
		c.Close()
	}
}
