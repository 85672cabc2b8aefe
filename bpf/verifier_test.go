package bpf

import (
	"errors"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// verifierStats is what the kernel's verifier reports for one program at
// log level stats (kernel/bpf/verifier.c: print_verification_stats).
type verifierStats struct {
	processed, states, peak int
	usec                    int
}

var (
	reProcessed = regexp.MustCompile(`processed (\d+) insns .* total_states (\d+) peak_states (\d+)`)
	reStack     = regexp.MustCompile(`stack depth [0-9+]+`)
	reVerTime   = regexp.MustCompile(`verification time (\d+) usec`)
)

func parseVerifierStats(log string) (verifierStats, bool) {
	var s verifierStats
	m := reProcessed.FindStringSubmatch(log)
	if m == nil {
		return s, false
	}
	s.processed, _ = strconv.Atoi(m[1])
	s.states, _ = strconv.Atoi(m[2])
	s.peak, _ = strconv.Atoi(m[3])
	if t := reVerTime.FindStringSubmatch(log); t != nil {
		s.usec, _ = strconv.Atoi(t[1])
	}
	return s, true
}

// verifierBudget caps the instructions the verifier processes per
// program. Every Open (every test, replay and record) pays the
// verification; these caps hold it near where docs/ARCHITECTURE.md ("Load
// time") says it is (about 103-107 k for XDP, 108-110 k for TC ingress,
// 28-30 k for TC egress, with either sockets_known), with some headroom, so
// a change that multiplies the verifier's states fails here instead of in
// everybody's load time. Before the link-layer offset was made one state
// (2026-12) the same programs took 416 k, 420 k and 297 k; the flow cache
// and the header fast path (2026-12) added ~5-8 k to each ingress program.
var verifierBudget = map[string]int{
	"flowaudit_xdp":        120_000,
	"flowaudit_tc_ingress": 120_000,
	"flowaudit_tc_egress":  33_000,
	"flowaudit_clock":      100,
	// flowaudit_replay (only replay loads it) verifies handle() twice,
	// once per direction (replay_in ~86 k, replay_out ~22 k), plus its
	// batch loop of up to REPLAY_BATCH_MAX frames: ~204 k in all.
	"flowaudit_replay": 240_000,
}

// defaultVerifierBudget holds a program not listed above: one that runs
// handle() once costs what flowaudit_xdp costs.
const defaultVerifierBudget = 120_000

// TestVerifierBudget loads the programs as Open does (same constants)
// with verifier statistics and holds each program's processed
// instructions under its budget.
func TestVerifierBudget(t *testing.T) {
	testenv.RequireBPF(t)
	for _, sk := range []bool{false, true} {
		spec, err := loadFlowaudit()
		if err != nil {
			t.Fatal(err)
		}
		for name, v := range map[string]any{
			"ephemeral_lo": uint16(32768), "ephemeral_hi": uint16(60999),
			"percpu_values": uint8(0), "sockets_known": boolU8(sk),
			"fast_path_on": boolU8(loadsInOrder),
		} {
			if err := spec.Variables[name].Set(v); err != nil {
				t.Fatal(err)
			}
		}
		t0 := time.Now()
		coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
			Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats},
		})
		wall := time.Since(t0)
		if err != nil {
			var ve *ebpf.VerifierError
			if errors.As(err, &ve) {
				t.Log(strings.Join(ve.Log[max(len(ve.Log)-20, 0):], "\n"))
			}
			t.Fatalf("%+v", err)
		}
		names := make([]string, 0, len(coll.Programs))
		for n := range coll.Programs {
			names = append(names, n)
		}
		sort.Strings(names)
		total := 0
		for _, n := range names {
			s, ok := parseVerifierStats(coll.Programs[n].VerifierLog)
			if !ok {
				t.Errorf("%s: no statistics in the verifier log:\n%s", n, coll.Programs[n].VerifierLog)
				continue
			}
			total += s.processed
			t.Logf("sockets_known=%v %-22s %s processed %7d insns, %5d states (peak %4d), verification %6d µs",
				sk, n, reStack.FindString(coll.Programs[n].VerifierLog), s.processed, s.states, s.peak, s.usec)
			budget, ok := verifierBudget[n]
			if !ok {
				budget = defaultVerifierBudget
			}
			if s.processed > budget {
				t.Errorf("%s: the verifier processed %d instructions, budget %d", n, s.processed, budget)
			}
		}
		coll.Close()
		t.Logf("sockets_known=%v: %d insns processed in all, collection loaded in %s", sk, total, wall.Round(time.Millisecond))
	}
}
