package main

import (
	"strings"
	"testing"
)

// The growth list names 10 M flows as measured when it was, and otherwise
// as extrapolated with the reason: the memory check's, or that -scale did
// not ask for it.
func TestScaleVerdictsTenMillion(t *testing.T) {
	run := func(n int) scaleResult {
		return scaleResult{n: n,
			read:  scaleRead{Flows: n, ReadNs: int64(n), ReadCPUNs: int64(n), FileBytes: int64(3 * n)},
			audit: scaleAudit{Flows: n, LoadNs: int64(n), AuditNs: int64(n), RSSKB: 30<<10 + int64(n)/4}}
	}
	small := []scaleResult{run(10_000), run(1_000_000)}
	all := append(small, run(10_000_000))
	for _, c := range []struct {
		name    string
		res     []scaleResult
		skipped map[int]string
		want    []string
		not     []string
	}{
		{"measured", all, map[int]string{}, []string{"- 10 000 000 flows: 30ms"}, []string{"extrapolated"}},
		{"memory", small, map[int]string{10_000_000: "MemAvailable 900 MiB < 9765 MiB needed"},
			[]string{"10 000 000 flows: **extrapolated**, not measured (MemAvailable 900 MiB < 9765 MiB needed)"}, nil},
		{"not asked", small, map[int]string{}, []string{"**extrapolated**, not measured (not asked for (-scale))"}, nil},
	} {
		out := scaleVerdicts(c.res, c.skipped)
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: no %q in\n%s", c.name, w, out)
			}
		}
		for _, w := range c.not {
			if strings.Contains(out, w) {
				t.Errorf("%s: %q in\n%s", c.name, w, out)
			}
		}
	}
}

func TestMemAvailable(t *testing.T) {
	n, err := memAvailable()
	if err != nil {
		t.Skipf("no /proc/meminfo here: %v", err)
	}
	if n <= 0 {
		t.Fatalf("MemAvailable %d bytes", n)
	}
}

// warmMemory writes to the memory it maps (it takes time) and asks for
// nothing when there is nothing to warm.
func TestWarmMemory(t *testing.T) {
	d, err := warmMemory(8 << 20)
	if err != nil {
		t.Fatal(err)
	}
	if d <= 0 {
		t.Errorf("8 MiB warmed in %s", d)
	}
	if d, err := warmMemory(0); d != 0 || err != nil {
		t.Errorf("warmMemory(0) = %s, %v", d, err)
	}
}
