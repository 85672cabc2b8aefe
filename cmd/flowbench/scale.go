package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowaudit/flowaudit/audit"
	"github.com/flowaudit/flowaudit/audit/benchflows"
	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf"
)

// Part 4: userspace scale. Every measurement runs in a child process (this
// binary re-executed) so that its peak RSS is its own.

// scaleRead is what the "read" child reports.
type scaleRead struct {
	Flows     int   `json:"flows"`
	FillNs    int64 `json:"fill_ns"`
	ReadNs    int64 `json:"read_ns"`     // Collector.ReadMaps: batch lookup, conversion, sort
	ReadRSSKB int64 `json:"read_rss_kb"` // peak RSS while reading (reset after the fill)
	WriteNs   int64 `json:"write_ns"`    // snapshot.WriteFile
	FileBytes int64 `json:"file_bytes"`
	// CPU time (user + system) of the read and of the write.
	ReadCPUNs  int64 `json:"read_cpu_ns"`
	WriteCPUNs int64 `json:"write_cpu_ns"`
}

// cpuNow is the process's user + system CPU time so far.
func cpuNow() int64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// scaleAudit is what the "audit" child reports.
type scaleAudit struct {
	Flows     int   `json:"flows"`
	LoadNs    int64 `json:"load_ns"`  // snapshot.ReadFile
	AuditNs   int64 `json:"audit_ns"` // audit.Run
	RSSKB     int64 `json:"rss_kb"`   // peak RSS of the whole child
	Findings  int   `json:"findings"`
	Documents int   `json:"rules"`
	// CPU time (user + system) of the load and of the audit.
	LoadCPUNs  int64 `json:"load_cpu_ns"`
	AuditCPUNs int64 `json:"audit_cpu_ns"`
}

const scaleIface = "if2"

// peakRSS reads VmHWM from /proc/self/status, in KiB (-1 if it cannot).
func peakRSS() int64 {
	kb, err := procKB("/proc/self/status", "VmHWM")
	if err != nil {
		return -1
	}
	return kb
}

// procKB reads the "key: N kB" line of a /proc file (status, meminfo).
func procKB(path, key string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			v = strings.TrimSpace(v)
			kb, err := strconv.ParseInt(strings.TrimSuffix(v, " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s: %s %q: %w", path, key, v, err)
			}
			return kb, nil
		}
	}
	return 0, fmt.Errorf("%s: no %s line", path, key)
}

// resetPeakRSS resets VmHWM to the current RSS (Linux ≥ 4.0).
func resetPeakRSS() error { return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

// childRead fills a flow map with n synthetic flows, reads it back like a
// recording does, and writes the snapshot file.
func childRead(n int, path string) (*scaleRead, error) {
	m, site, err := benchflows.Load()
	if err != nil {
		return nil, err
	}
	g, err := benchflows.New(m, site, scaleIface)
	if err != nil {
		return nil, err
	}
	capacity := uint32(max(n+n/20, bpf.DefaultFlowEntries))
	c, err := bpf.Open(bpf.Options{FlowEntries: capacity, EphemeralPorts: [2]uint16{32768, 60999}})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	t0 := time.Now()
	for from := 0; from < n; from += 65536 {
		if err := c.BenchLoadFlows(g.Flows(from, min(from+65536, n))); err != nil {
			return nil, err
		}
	}
	res := &scaleRead{FillNs: int64(time.Since(t0))}
	runtime.GC()
	debug.FreeOSMemory()
	if err := resetPeakRSS(); err != nil {
		return nil, err
	}
	stopProf := profileStep("read")
	t0, c0 := time.Now(), cpuNow()
	r, err := c.ReadMaps()
	if err != nil {
		return nil, err
	}
	res.ReadNs, res.ReadCPUNs = int64(time.Since(t0)), cpuNow()-c0
	stopProf()
	res.ReadRSSKB = peakRSS()
	res.Flows = len(r.Flows)
	snap := g.Snapshot(r.Flows, capacity)
	t0, c0 = time.Now(), cpuNow()
	if err := snapshot.WriteFile(path, snap); err != nil {
		return nil, err
	}
	res.WriteNs, res.WriteCPUNs = int64(time.Since(t0)), cpuNow()-c0
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	res.FileBytes = st.Size()
	return res, nil
}

// childAudit reads the snapshot file and audits it against the matrix.
func childAudit(path string) (*scaleAudit, error) {
	m, site, err := benchflows.Load()
	if err != nil {
		return nil, err
	}
	stopProf := profileStep("audit")
	defer stopProf()
	t0, c0 := time.Now(), cpuNow()
	s, err := snapshot.ReadFile(path)
	if err != nil {
		return nil, err
	}
	res := &scaleAudit{Flows: len(s.Flows), LoadNs: int64(time.Since(t0)), LoadCPUNs: cpuNow() - c0}
	t0, c0 = time.Now(), cpuNow()
	rep, err := audit.Run(s, audit.Options{Matrix: m, Site: site, Now: func() time.Time { return benchflows.Start.Add(2 * time.Hour) }})
	if err != nil {
		return nil, err
	}
	res.AuditNs, res.AuditCPUNs = int64(time.Since(t0)), cpuNow()-c0
	res.RSSKB = peakRSS()
	res.Findings = len(rep.Findings)
	res.Documents = len(m.Rules)
	return res, nil
}

// profileStep writes a CPU profile of a step (a scale child's, or part 5's batch replay) to
// $FLOWBENCH_PROFILE/<step>.pprof when that variable names a directory
// (go tool pprof bin/flowbench DIR/read.pprof); the returned func stops it.
func profileStep(step string) func() {
	dir := os.Getenv("FLOWBENCH_PROFILE")
	if dir == "" {
		return func() {}
	}
	f, err := os.Create(filepath.Join(dir, step+".pprof"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "profile %s: %v\n", step, err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		fmt.Fprintf(os.Stderr, "profile %s: %v\n", step, err)
		return func() {}
	}
	return func() { pprof.StopCPUProfile(); f.Close() }
}

// runChild is the entry point of a re-executed flowbench: it prints one
// JSON object on stdout.
func runChild(args []string) error {
	if err := unpinThreads(); err != nil {
		return fmt.Errorf("unpin threads: %w", err)
	}
	var v any
	var err error
	switch {
	case len(args) == 3 && args[0] == "scale-read":
		n, perr := strconv.Atoi(args[1])
		if perr != nil {
			return perr
		}
		v, err = childRead(n, args[2])
	case len(args) == 2 && args[0] == "scale-audit":
		v, err = childAudit(args[1])
	case len(args) == 2 && args[0] == "deploy-audit":
		v, err = childDeployAudit(args[1])
	case len(args) == 2 && args[0] == "accum-bytes":
		n, perr := strconv.Atoi(args[1])
		if perr != nil {
			return perr
		}
		v, err = childAccumBytes(n)
	default:
		return fmt.Errorf("child: unknown arguments %q", args)
	}
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(v)
}

// inChild re-executes this binary with args and decodes its JSON answer.
func inChild(out any, args ...string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(exe, append([]string{"child"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("child %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return json.Unmarshal(stdout.Bytes(), out)
}

type scaleResult struct {
	n         int
	warmBytes int64         // memory warmed before the size ran
	warm      time.Duration // how long writing to it took
	read      scaleRead
	audit     scaleAudit
}

// scaleBytesPerFlow is the memory a size of part 4 is given room for, per
// flow: at 10 M flows the read child peaked at ~470 B/flow beside a kernel
// flow map of ~170 B/flow, the audit child at ~390 B/flow (BENCHMARKS.md).
const scaleBytesPerFlow = 1024

// memAvailable is MemAvailable from /proc/meminfo, in bytes.
func memAvailable() (int64, error) {
	kb, err := procKB("/proc/meminfo", "MemAvailable")
	return kb << 10, err
}

// warmMemory maps size bytes of anonymous memory (advised
// MADV_HUGEPAGE, as the collector's and the reader's large slices are),
// writes to every 4 KiB page of it, unmaps it, and returns how long the
// writing took. On a virtual machine the first write to guest memory the
// VM has never used makes the host back it too: on this box 1 GiB took
// 1.3 s that way, and 0.09 s once it had been used and freed. A sensor
// that has run for a while has no such memory; a freshly booted VM has
// gigabytes of it. Warming the memory a size is about to use measures
// flowaudit rather than how much of it the VM had touched before.
func warmMemory(size int64) (time.Duration, error) {
	if size <= 0 {
		return 0, nil
	}
	b, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return 0, fmt.Errorf("warm %d MiB: %w", size>>20, err)
	}
	defer unix.Munmap(b) //nolint:errcheck // nothing to do about it
	_ = unix.Madvise(b, unix.MADV_HUGEPAGE)
	t0 := time.Now()
	for i := 0; i < len(b); i += 4096 {
		b[i] = 1
	}
	return time.Since(t0), nil
}

// measureScale runs each size in its child processes. A size the
// machine's available memory cannot hold (scaleBytesPerFlow) is skipped;
// skipped says which and why. Before each size, the memory it may use is
// warmed (warmMemory).
func measureScale(sizes []int, tmp string, logf func(string, ...any)) (out []scaleResult, skipped map[int]string, err error) {
	skipped = map[int]string{}
	for _, n := range sizes {
		avail, err := memAvailable()
		if err != nil {
			return nil, nil, err
		}
		r := scaleResult{n: n, warmBytes: int64(n) * scaleBytesPerFlow}
		if r.warmBytes > avail {
			skipped[n] = fmt.Sprintf("MemAvailable %d MiB < %d MiB needed", avail>>20, r.warmBytes>>20)
			logf("  %d flows: skipped, %s", n, skipped[n])
			continue
		}
		if r.warm, err = warmMemory(r.warmBytes); err != nil {
			return nil, nil, err
		}
		// The compact encoding (WriteFile picks it for a name not ending
		// in .json).
		path := filepath.Join(tmp, fmt.Sprintf("snapshot-%d.fas", n))
		if err := inChild(&r.read, "scale-read", strconv.Itoa(n), path); err != nil {
			return nil, nil, err
		}
		if r.read.Flows != n {
			return nil, nil, fmt.Errorf("read %d flows back, loaded %d", r.read.Flows, n)
		}
		if err := inChild(&r.audit, "scale-audit", path); err != nil {
			return nil, nil, err
		}
		os.Remove(path)
		logf("  %d flows: %d MiB warmed in %s; read %s (peak RSS %d MiB), file %.1f MiB written in %s, audit %s + load %s (peak RSS %d MiB, %d findings)",
			n, r.warmBytes>>20, r.warm.Round(time.Millisecond), time.Duration(r.read.ReadNs).Round(time.Millisecond), r.read.ReadRSSKB>>10, float64(r.read.FileBytes)/(1<<20),
			time.Duration(r.read.WriteNs).Round(time.Millisecond), time.Duration(r.audit.AuditNs).Round(time.Millisecond),
			time.Duration(r.audit.LoadNs).Round(time.Millisecond), r.audit.RSSKB>>10, r.audit.Findings)
		out = append(out, r)
	}
	return out, skipped, nil
}

// Issue 16's targets for 1 M flows.
const (
	scaleTopFlows       = 10_000_000 // issue 16: growth up to 10 M flows
	scaleTargetFlows    = 1_000_000
	scaleTargetTotal    = 2 * time.Second
	scaleTargetRSSMiB   = 400
	scaleTargetFileByte = 80
)

// total is map read + write + load + audit, wall clock and CPU.
func (s *scaleResult) total() (wall, cpu time.Duration) {
	wall = time.Duration(s.read.ReadNs + s.read.WriteNs + s.audit.LoadNs + s.audit.AuditNs)
	cpu = time.Duration(s.read.ReadCPUNs + s.read.WriteCPUNs + s.audit.LoadCPUNs + s.audit.AuditCPUNs)
	return wall, cpu
}

// scaleVerdicts says met / not met for issue 16's targets, and how the
// cost grows with the flow count. 10 M flows is extrapolated from the
// largest measured size when it was not measured; skipped gives the reason
// for a size measureScale skipped.
func scaleVerdicts(res []scaleResult, skipped map[int]string) string {
	var b strings.Builder
	b.WriteString("\nScale (issue 16, part 4):\n\n")
	var at *scaleResult
	for i := range res {
		if res[i].n == scaleTargetFlows {
			at = &res[i]
		}
	}
	if at == nil {
		b.WriteString("- 1 M flows end to end: not measured in this run.\n")
	} else {
		wall, cpu := at.total()
		fmt.Fprintf(&b, "- 1 M flows end to end (map read %s + write %s + load %s + audit %s): %s wall clock, %s CPU (target ≤ %s): wall %s, CPU %s.\n",
			ms(at.read.ReadNs), ms(at.read.WriteNs), ms(at.audit.LoadNs), ms(at.audit.AuditNs),
			wall.Round(time.Millisecond), cpu.Round(time.Millisecond), scaleTargetTotal,
			verdict(wall <= scaleTargetTotal), verdict(cpu <= scaleTargetTotal))
		fmt.Fprintf(&b, "- peak RSS of the audit step (load + audit), 1 M flows: %d MiB (target ≤ %d MiB): %s.\n",
			at.audit.RSSKB>>10, scaleTargetRSSMiB, verdict(at.audit.RSSKB>>10 <= scaleTargetRSSMiB))
		per := float64(at.read.FileBytes) / float64(at.n)
		fmt.Fprintf(&b, "- snapshot file, 1 M flows: %.1f B/flow (target ≤ %d): %s.\n", per, scaleTargetFileByte, verdict(per <= scaleTargetFileByte))
	}
	if len(res) > 0 {
		b.WriteString("\nGrowth (per flow, end to end wall clock | CPU | audit-step peak RSS | file | memory warmed before it):\n\n")
		for i := range res {
			s := &res[i]
			wall, cpu := s.total()
			fmt.Fprintf(&b, "- %s flows: %s | %s (%.2f µs/flow CPU) | %d MiB | %.1f MiB | %d MiB in %s\n", commas(uint64(s.n)),
				wall.Round(time.Millisecond), cpu.Round(time.Millisecond), float64(cpu.Nanoseconds())/1e3/float64(s.n),
				s.audit.RSSKB>>10, float64(s.read.FileBytes)/(1<<20), s.warmBytes>>20, s.warm.Round(time.Millisecond))
		}
		last := &res[len(res)-1]
		if last.n < scaleTopFlows {
			why, ok := skipped[scaleTopFlows]
			if !ok {
				why = "not asked for (-scale)"
			}
			f := scaleTopFlows / float64(last.n)
			_, cpu := last.total()
			// Memory: the part above the smallest run's grows with the flows.
			base := res[0].audit.RSSKB >> 10
			rss := float64(base) + float64(last.audit.RSSKB>>10-base)*f
			fmt.Fprintf(&b, "- %s flows: **extrapolated**, not measured (%s): ~%s CPU, ~%.0f MiB audit-step peak RSS, ~%.0f MiB file, linear in the flows from the %s-flow run.\n",
				commas(scaleTopFlows), why, (time.Duration(float64(cpu) * f)).Round(100*time.Millisecond), rss,
				float64(last.read.FileBytes)*f/(1<<20), commas(uint64(last.n)))
		}
	}
	return b.String()
}

func ms(ns int64) time.Duration { return time.Duration(ns).Round(time.Millisecond) }
