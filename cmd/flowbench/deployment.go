package main

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/flowaudit/flowaudit/audit"
	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

// Part 7: a whole deployment. A USM server and N sensors, each with its own
// synthetic snapshot file, audited together (`flowaudit audit
// --deployment`) in a child process, so its peak RSS is its own.

// deployConfig sizes part 7.
type deployConfig struct {
	sensors int // sensor nodes
	assets  int // syslog sources per sensor (MONITORED_ASSETS)
	hids    int // HIDS agents per sensor
}

// deployAudit is what the "deploy-audit" child reports.
type deployAudit struct {
	Nodes      int   `json:"nodes"`
	Flows      int   `json:"flows"`
	ResolveNs  int64 `json:"resolve_ns"` // read the file, the catalog, the site and every snapshot
	AuditNs    int64 `json:"audit_ns"`   // per-node audits and the cross-node checks
	RenderNs   int64 `json:"render_ns"`  // the JSON report
	ReportSize int64 `json:"report_bytes"`
	RSSKB      int64 `json:"rss_kb"`
	Cross      int   `json:"cross"`
	Total      int   `json:"total"`
	HeapKB     int64 `json:"heap_kb"` // live heap after the audit (the report and everything loaded)
}

type deployResult struct {
	cfg       deployConfig
	fileBytes int64
	audit     deployAudit
}

var deployStart = time.Date(2026, 11, 26, 8, 0, 0, 0, time.UTC)

func depAddr(prefix [2]byte, i int) netip.Addr {
	return netip.AddrFrom4([4]byte{prefix[0], prefix[1], byte(i >> 8), byte(i)})
}

// writeDeployment writes the server's and every sensor's snapshot, a site
// and the deployment file into dir, and returns the file's path and the
// snapshots' total size. Planted: sensor 1's events to the server are
// dropped in between (one-sided), sensor 2 talks to sensor 3 on an
// undocumented port.
func writeDeployment(dir string, c deployConfig) (string, int64, error) {
	server := netip.MustParseAddr("172.16.0.1")
	sensorAddr := func(i int) netip.Addr { return depAddr([2]byte{172, 17}, i+1) }
	win := 10 * time.Minute
	open := snapshot.Evidence{SynIn: 1, SynAckOut: 1}
	openOut := snapshot.Evidence{SynOut: 1, SynAckIn: 1}
	fl := func(dir snapshot.Direction, p snapshot.Proto, port uint16, peer netip.Addr, ev snapshot.Evidence, in, out uint64) snapshot.Flow {
		return snapshot.Flow{Interface: "eth0", Direction: dir, Proto: p, Port: port, Peer: peer, PacketsIn: in, PacketsOut: out,
			BytesIn: in * 200, BytesOut: out * 200, FirstSeen: deployStart.Add(time.Minute), LastSeen: deployStart.Add(9 * time.Minute), Evidence: ev}
	}
	snap := func(host string, addr netip.Addr, flows []snapshot.Flow) *snapshot.Snapshot {
		s := &snapshot.Snapshot{Version: snapshot.FormatVersion, Hostname: host, Source: "live", Start: deployStart, End: deployStart.Add(win),
			EphemeralPorts: [2]uint16{32768, 60999},
			Interfaces:     []snapshot.Interface{{Name: "eth0", Index: 2, Addresses: []netip.Addr{addr}}},
			Stats:          snapshot.Stats{FlowCapacity: 65536, FlowEntries: uint32(len(flows)), FlowBudget: 65536}, Flows: flows}
		s.Sort()
		return s
	}
	var total int64
	write := func(name string, s *snapshot.Snapshot) error {
		p := filepath.Join(dir, name)
		if err := snapshot.WriteFile(p, s); err != nil {
			return err
		}
		st, err := os.Stat(p)
		if err == nil {
			total += st.Size()
		}
		return err
	}
	var srv []snapshot.Flow
	var dep strings.Builder
	fmt.Fprintf(&dep, "matrix: usm@5.6.5\nsite: site.yaml\nnodes:\n  - {name: server, role: server, snapshot: server.json, addresses: [%s]}\n", server)
	for i := 0; i < c.sensors; i++ {
		a := sensorAddr(i)
		var f []snapshot.Flow
		events := openOut
		if i == 1 {
			events = snapshot.Evidence{SynOut: 3}
		} else {
			srv = append(srv, fl(snapshot.Inbound, snapshot.TCP, 40001, a, open, 400, 300))
		}
		f = append(f, fl(snapshot.Outbound, snapshot.TCP, 40001, server, events, 300, 400))
		f = append(f, fl(snapshot.Outbound, snapshot.TCP, 40002, server, openOut, 30, 40))
		srv = append(srv, fl(snapshot.Inbound, snapshot.TCP, 40002, a, open, 40, 30))
		for _, port := range []uint16{22, 40007, 9390} {
			f = append(f, fl(snapshot.Inbound, snapshot.TCP, port, server, open, 50, 60))
			srv = append(srv, fl(snapshot.Outbound, snapshot.TCP, port, a, openOut, 60, 50))
		}
		for j := 0; j < c.assets; j++ {
			f = append(f, fl(snapshot.Inbound, snapshot.UDP, 514, depAddr([2]byte{10, byte(i % 128)}, j+1), snapshot.Evidence{}, 20, 0))
		}
		for j := 0; j < c.hids; j++ {
			f = append(f, fl(snapshot.Inbound, snapshot.UDP, 1514, depAddr([2]byte{10, byte(128 + i%128)}, j+1), snapshot.Evidence{}, 12, 12))
		}
		if i == 2 {
			f = append(f, fl(snapshot.Outbound, snapshot.TCP, 8443, sensorAddr(3), openOut, 10, 10))
		}
		if i == 3 {
			f = append(f, fl(snapshot.Inbound, snapshot.TCP, 8443, sensorAddr(2), open, 10, 10))
		}
		name := fmt.Sprintf("sensor-%03d", i)
		if err := write(name+".json", snap(name, a, f)); err != nil {
			return "", 0, err
		}
		fmt.Fprintf(&dep, "  - {name: %s, role: sensor, snapshot: %s.json, addresses: [%s]}\n", name, name, a)
	}
	if err := write("server.json", snap("server", server, srv)); err != nil {
		return "", 0, err
	}
	site := "zones:\n  ADMIN_NETWORK: 192.0.2.0/24\n  MONITORED_ASSETS: 10.0.0.0/9\nroles:\n  hids-host: 10.128.0.0/9\n"
	if err := os.WriteFile(filepath.Join(dir, "site.yaml"), []byte(site), 0o644); err != nil {
		return "", 0, err
	}
	p := filepath.Join(dir, "deployment.yaml")
	return p, total, os.WriteFile(p, []byte(dep.String()), 0o644)
}

// childDeployAudit audits the deployment file at path.
func childDeployAudit(path string) (*deployAudit, error) {
	dep, err := catalog.LoadDeployment(path)
	if err != nil {
		return nil, err
	}
	o := audit.DeploymentOptions{Audit: audit.Options{Now: func() time.Time { return deployStart.Add(time.Hour) }}}
	t0 := time.Now()
	in, err := audit.ResolveDeployment(dep, o)
	if err != nil {
		return nil, err
	}
	res := &deployAudit{ResolveNs: int64(time.Since(t0)), Nodes: len(dep.Nodes)}
	for _, s := range in.Snapshots {
		res.Flows += len(s.Flows)
	}
	t0 = time.Now()
	rep, err := audit.RunDeployment(in, o)
	if err != nil {
		return nil, err
	}
	res.AuditNs = int64(time.Since(t0))
	t0 = time.Now()
	var cw countWriter
	if err := audit.WriteDeployment(&cw, rep, "json", audit.RenderOptions{}); err != nil {
		return nil, err
	}
	res.RenderNs = int64(time.Since(t0))
	res.ReportSize = cw.n
	res.RSSKB = peakRSS()
	res.Cross = len(rep.Findings)
	for _, n := range rep.Total {
		res.Total += n
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	res.HeapKB = int64(ms.HeapAlloc >> 10)
	runtime.KeepAlive(rep)
	return res, nil
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

func measureDeployment(c deployConfig, tmp string, logf func(string, ...any)) (*deployResult, error) {
	dir := filepath.Join(tmp, "deployment")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	path, size, err := writeDeployment(dir, c)
	if err != nil {
		return nil, err
	}
	r := &deployResult{cfg: c, fileBytes: size}
	if err := inChild(&r.audit, "deploy-audit", path); err != nil {
		return nil, err
	}
	if r.audit.Nodes != c.sensors+1 {
		return nil, fmt.Errorf("audited %d nodes, wrote %d", r.audit.Nodes, c.sensors+1)
	}
	// The planted problems must be found, and nothing else across nodes.
	if r.audit.Cross != 2 {
		return nil, fmt.Errorf("%d cross-node findings, want the 2 planted", r.audit.Cross)
	}
	logf("  %d nodes, %d flows (%.0f MiB of snapshots): resolve %s, audit %s, JSON report %s (%.1f MiB); peak RSS %d MiB",
		r.audit.Nodes, r.audit.Flows, float64(size)/(1<<20), time.Duration(r.audit.ResolveNs).Round(time.Millisecond),
		time.Duration(r.audit.AuditNs).Round(time.Millisecond), time.Duration(r.audit.RenderNs).Round(time.Millisecond),
		float64(r.audit.ReportSize)/(1<<20), r.audit.RSSKB>>10)
	return r, nil
}

func (r *report) deployRows() [][]string {
	d := r.deploy
	if d == nil {
		return nil
	}
	a := d.audit
	return [][]string{
		{"7 deployment", fmt.Sprintf("audit --deployment, USM server + %d sensors, %s flows (%.0f MiB of snapshots)", d.cfg.sensors, commas(uint64(a.Flows)), float64(d.fileBytes)/(1<<20)),
			fmt.Sprintf("read %s + audit %s + JSON report %s (%.0f MiB); peak RSS %d MiB, live heap after %d MiB",
				time.Duration(a.ResolveNs).Round(time.Millisecond), time.Duration(a.AuditNs).Round(time.Millisecond),
				time.Duration(a.RenderNs).Round(time.Millisecond), float64(a.ReportSize)/(1<<20), a.RSSKB>>10, a.HeapKB>>10),
			fmt.Sprintf("%.2f µs/flow, %.1f KiB RSS/flow", float64(a.ResolveNs+a.AuditNs)/1e3/float64(a.Flows), float64(a.RSSKB)/float64(a.Flows)),
			fmt.Sprintf("2 planted cross-node findings, %d in all", a.Total)},
	}
}

func (r *report) deployMethod() string {
	d := r.deploy
	if d == nil {
		return ""
	}
	return fmt.Sprintf("**7. A deployment.** Synthetic snapshots of a USM Appliance deployment: one server and %d sensors, each\n"+
		"sensor with its events to the server (40001, 40002), the server's management connections to it (22, 40007,\n"+
		"9390), %d syslog sources and %d HIDS agents (every flow its own peer), written to tmpfs with a site and a\n"+
		"deployment file. Planted: sensor 1's events dropped in between, sensor 2 → sensor 3 on an undocumented port; the\n"+
		"run fails unless exactly those two cross-node findings come out. One child process (this binary re-executed)\n"+
		"runs `audit.ResolveDeployment` (the file, catalog, site, and every snapshot read: all are held in memory at\n"+
		"once), `audit.RunDeployment` (every node's audit against its role's matrix, then the cross-node checks and the\n"+
		"role × role view) and writes the JSON report to a counter; peak RSS is its `VmHWM`.\n\n", d.cfg.sensors, d.cfg.assets, d.cfg.hids)
}

func parseDeployConfig(s string) (deployConfig, error) {
	var c deployConfig
	f := strings.Split(s, ",")
	if len(f) != 3 {
		return c, fmt.Errorf("want SENSORS,ASSETS,HIDS, e.g. 500,200,50")
	}
	var v [3]int
	for i, x := range f {
		n, err := strconv.Atoi(strings.TrimSpace(x))
		if err != nil || n < 0 || (i == 0 && n < 4) {
			return c, fmt.Errorf("bad number %q (sensors ≥ 4)", x)
		}
		v[i] = n
	}
	return deployConfig{sensors: v[0], assets: v[1], hids: v[2]}, nil
}
