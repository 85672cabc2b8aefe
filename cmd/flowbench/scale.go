package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

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
}

// scaleAudit is what the "audit" child reports.
type scaleAudit struct {
	Flows     int   `json:"flows"`
	LoadNs    int64 `json:"load_ns"`  // snapshot.ReadFile
	AuditNs   int64 `json:"audit_ns"` // audit.Run
	RSSKB     int64 `json:"rss_kb"`   // peak RSS of the whole child
	Findings  int   `json:"findings"`
	Documents int   `json:"rules"`
}

const scaleIface = "if2"

// peakRSS reads VmHWM from /proc/self/status, in KiB.
func peakRSS() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb
		}
	}
	return -1
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
	t0 = time.Now()
	r, err := c.ReadMaps()
	if err != nil {
		return nil, err
	}
	res.ReadNs = int64(time.Since(t0))
	res.ReadRSSKB = peakRSS()
	res.Flows = len(r.Flows)
	snap := g.Snapshot(r.Flows, capacity)
	t0 = time.Now()
	if err := snapshot.WriteFile(path, snap); err != nil {
		return nil, err
	}
	res.WriteNs = int64(time.Since(t0))
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
	t0 := time.Now()
	s, err := snapshot.ReadFile(path)
	if err != nil {
		return nil, err
	}
	res := &scaleAudit{Flows: len(s.Flows), LoadNs: int64(time.Since(t0))}
	t0 = time.Now()
	rep, err := audit.Run(s, audit.Options{Matrix: m, Site: site, Now: func() time.Time { return benchflows.Start.Add(2 * time.Hour) }})
	if err != nil {
		return nil, err
	}
	res.AuditNs = int64(time.Since(t0))
	res.RSSKB = peakRSS()
	res.Findings = len(rep.Findings)
	res.Documents = len(m.Rules)
	return res, nil
}

// runChild is the entry point of a re-executed flowbench: it prints one
// JSON object on stdout.
func runChild(args []string) error {
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
	n     int
	read  scaleRead
	audit scaleAudit
}

func measureScale(sizes []int, tmp string, logf func(string, ...any)) ([]scaleResult, error) {
	var out []scaleResult
	for _, n := range sizes {
		path := filepath.Join(tmp, fmt.Sprintf("snapshot-%d.json", n))
		r := scaleResult{n: n}
		if err := inChild(&r.read, "scale-read", strconv.Itoa(n), path); err != nil {
			return nil, err
		}
		if r.read.Flows != n {
			return nil, fmt.Errorf("read %d flows back, loaded %d", r.read.Flows, n)
		}
		if err := inChild(&r.audit, "scale-audit", path); err != nil {
			return nil, err
		}
		os.Remove(path)
		logf("  %d flows: read %s (peak RSS %d MiB), file %.1f MiB written in %s, audit %s + load %s (peak RSS %d MiB, %d findings)",
			n, time.Duration(r.read.ReadNs).Round(time.Millisecond), r.read.ReadRSSKB>>10, float64(r.read.FileBytes)/(1<<20),
			time.Duration(r.read.WriteNs).Round(time.Millisecond), time.Duration(r.audit.AuditNs).Round(time.Millisecond),
			time.Duration(r.audit.LoadNs).Round(time.Millisecond), r.audit.RSSKB>>10, r.audit.Findings)
		out = append(out, r)
	}
	return out, nil
}
