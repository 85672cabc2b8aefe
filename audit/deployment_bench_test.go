package audit

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

// BenchmarkDeployment audits a deployment of one server and 500 sensors
// (testapp), each sensor with 200 syslog sources, held in memory.
func BenchmarkDeployment(b *testing.B) {
	const sensors, sources = 500, 200
	var dep strings.Builder
	dep.WriteString("matrix: testapp\nnodes:\n  - {name: server, role: server, snapshot: s.json, addresses: [10.9.0.1]}\n")
	snaps := map[string]*snapshot.Snapshot{}
	var srv []snapshot.Flow
	for i := 0; i < sensors; i++ {
		a := netip.AddrFrom4([4]byte{10, 3, byte(i >> 8), byte(i)})
		name := fmt.Sprintf("sensor-%d", i)
		fmt.Fprintf(&dep, "  - {name: %s, role: sensor, snapshot: %s.json, addresses: [%s]}\n", name, name, a)
		fl := []snapshot.Flow{depFlow("out", "tcp", 40001, "10.9.0.1", 9, 9, openOut), depFlow("in", "tcp", 22, "192.0.2.10", 9, 9, synAck(1))}
		for j := 0; j < sources; j++ {
			fl = append(fl, depFlow("in", "udp", 514, netip.AddrFrom4([4]byte{10, 2, byte(j >> 8), byte(j)}).String(), 5, 0, snapshot.Evidence{}))
		}
		snaps[name] = snap(10*time.Minute, fl...)
		srv = append(srv, depFlow("in", "tcp", 40001, a.String(), 9, 9, synAck(1)))
	}
	snaps["server"] = snap(10*time.Minute, srv...)
	d, err := catalog.ParseDeployment("bench.yaml", []byte(dep.String()))
	if err != nil {
		b.Fatal(err)
	}
	c, _ := catalog.LoadFiles("testdata/engine/testapp.yaml")
	p, _ := c.Product("testapp")
	site, _ := catalog.LoadSite("testdata/engine/site.yaml")
	in := &DeploymentInput{Deployment: d, Product: p, Version: p.Latest(), Conditions: map[string]bool{}, Site: site, Snapshots: snaps}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r, err := RunDeployment(in, depOptions())
		if err != nil {
			b.Fatal(err)
		}
		if len(r.Findings) != 0 {
			b.Fatalf("%d cross findings", len(r.Findings))
		}
	}
}
