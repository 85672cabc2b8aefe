package audit

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

// depFlow is a flow of one node at a fixed time inside the deployment's
// window.
func depFlow(dir, proto string, port uint16, peer string, pin, pout uint64, ev snapshot.Evidence) snapshot.Flow {
	return flow(dir, proto, port, peer, pin, pout, ev)
}

var (
	openOut = snapshot.Evidence{SynOut: 1, SynAckIn: 1}
	synOut  = snapshot.Evidence{SynOut: 3}
)

const testDeployment = `matrix: testapp
site: site.yaml
nodes:
  - name: server
    role: server
    snapshot: server.json
    addresses: [10.9.0.1]
  - name: sensor-a
    role: sensor
    snapshot: sensor-a.json
    addresses: 10.3.0.11
  - name: sensor-b
    role: sensor
    snapshot: sensor-b.json
    addresses: [10.3.0.12]
`

// deploymentInput resolves testDeployment (plus extra node lines) with the
// given snapshots, as ResolveDeployment would have read them.
func deploymentInput(t *testing.T, extra string, snaps map[string]*snapshot.Snapshot) *DeploymentInput {
	t.Helper()
	dep, err := catalog.ParseDeployment("testdata/engine/deployment.yaml", []byte(testDeployment+extra))
	if err != nil {
		t.Fatal(err)
	}
	c, err := catalog.LoadFiles("testdata/engine/testapp.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p, _ := c.Product("testapp")
	site, err := catalog.LoadSite("testdata/engine/site.yaml")
	if err != nil {
		t.Fatal(err)
	}
	in := &DeploymentInput{Deployment: dep, Product: p, Version: p.Latest(), Conditions: map[string]bool{}, Site: site,
		Snapshots: snaps, LoadErrors: map[string]error{}}
	for _, n := range dep.Nodes {
		if snaps[n.Name] == nil {
			in.LoadErrors[n.Name] = fmt.Errorf("open snapshot: open %s: no such file or directory", n.Snapshot)
		}
	}
	return in
}

func depOptions() DeploymentOptions {
	return DeploymentOptions{Audit: Options{Now: func() time.Time { return t0.Add(time.Hour) }}}
}

type crossWant struct {
	id  string
	sev Severity
}

func crossIDs(r *DeploymentReport) []crossWant {
	var out []crossWant
	for _, f := range r.Findings {
		out = append(out, crossWant{f.ID, f.Severity})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

// TestDeploymentCross: a required sensor → server flow dropped in between
// (one-sided), one that works, a sensor ↔ sensor flow and a sensor → server
// flow no rule documents, a node whose snapshot is missing and one whose
// snapshot is old and outside the others' window: each reported with its
// kind, nothing else.
func TestDeploymentCross(t *testing.T) {
	win := 10 * time.Minute
	server := snap(win,
		depFlow("in", "tcp", 40001, "10.3.0.12", 50, 40, synAck(1)),
		depFlow("in", "tcp", 9999, "10.3.0.12", 5, 5, synAck(1)),
	)
	sensorA := snap(win,
		depFlow("out", "tcp", 40001, "10.9.0.1", 3, 0, synOut),    // dropped in between
		depFlow("out", "tcp", 8443, "10.3.0.12", 20, 18, openOut), // to the other sensor
	)
	sensorB := snap(win,
		depFlow("out", "tcp", 40001, "10.9.0.1", 40, 50, openOut),
		depFlow("out", "tcp", 9999, "10.9.0.1", 5, 5, openOut),
		depFlow("in", "tcp", 8443, "10.3.0.11", 18, 20, synAck(1)),
	)
	old := snap(win, depFlow("out", "tcp", 40001, "10.9.0.1", 3, 0, synOut))
	old.Start, old.End = t0.Add(-72*time.Hour), t0.Add(-72*time.Hour+win)
	extra := `  - name: sensor-c
    role: sensor
    snapshot: sensor-c.json
    addresses: [10.3.0.13]
  - name: sensor-d
    role: sensor
    snapshot: sensor-d.json
    addresses: [10.3.0.14]
`
	in := deploymentInput(t, extra, map[string]*snapshot.Snapshot{"server": server, "sensor-a": sensorA, "sensor-b": sensorB, "sensor-d": old})
	r, err := RunDeployment(in, depOptions())
	if err != nil {
		t.Fatal(err)
	}
	want := []crossWant{
		{"inter-role-undocumented/sensor-a>sensor-b/tcp/8443", High},
		{"inter-role-undocumented/sensor-b>server/tcp/9999", High},
		{"node-incomplete/sensor-c/missing", High},
		{"node-incomplete/sensor-d/outside-window", Medium},
		{"node-incomplete/sensor-d/too-old", Medium},
		{"one-sided/sensor-a>server/tcp/40001", High},
	}
	if got := crossIDs(r); !slices.Equal(got, want) {
		t.Errorf("cross findings\n got %v\nwant %v", got, want)
	}
	byID := map[string]Finding{}
	for _, f := range r.Findings {
		byID[f.ID] = f
	}
	if c := byID["inter-role-undocumented/sensor-a>sensor-b/tcp/8443"].Cross; c == nil || c.RolesConnected || c.SenderState != "open" || c.ReceiverState != "open" {
		t.Errorf("sensor ↔ sensor evidence %+v: want both ends open, roles not connected", c)
	}
	if c := byID["inter-role-undocumented/sensor-b>server/tcp/9999"].Cross; c == nil || !c.RolesConnected {
		t.Errorf("sensor → server tcp/9999 evidence %+v: want roles connected (on tcp/40001)", c)
	}
	os := byID["one-sided/sensor-a>server/tcp/40001"]
	if os.Cross == nil || os.Cross.SenderState != "filtered" || os.Cross.ReceiverState != "" || os.Cross.SenderPackets != 3 ||
		!slices.Equal(os.Cross.Rules, []string{"t1.server.events.from-sensor", "t1.sensor.events"}) || os.Rule == nil {
		t.Errorf("one-sided evidence %+v rule %+v", os.Cross, os.Rule)
	}
	if !strings.Contains(byID["node-incomplete/sensor-c/missing"].Summary, "no such file") {
		t.Errorf("missing node summary lacks the error: %s", byID["node-incomplete/sensor-c/missing"].Summary)
	}
	status := map[string]string{}
	for _, n := range r.Nodes {
		status[n.Name] = n.Status
		if (n.Report == nil) != (n.Name == "sensor-c") {
			t.Errorf("node %s: report %v", n.Name, n.Report != nil)
		}
	}
	if status["server"] != NodeOK || status["sensor-c"] != NodeMissing || status["sensor-d"] != "too-old,outside-window" {
		t.Errorf("node statuses %v", status)
	}
	// The role view: sensor → server documents tcp/40001 (required) and
	// saw it filtered at worst; sensor → sensor documents nothing.
	cells := map[string]RoleCell{}
	for _, c := range r.RoleView {
		cells[c.From+">"+c.To] = c
	}
	if c := cells["sensor>server"]; !slices.Equal(c.Documented, []string{"tcp/40001 required"}) ||
		!slices.Equal(c.Observed, []string{"tcp/9999 open", "tcp/40001 filtered"}) || c.Worst != "high" {
		t.Errorf("sensor>server cell %+v", c)
	}
	if c := cells["sensor>sensor"]; len(c.Documented) != 0 || !slices.Equal(c.Observed, []string{"tcp/8443 open"}) {
		t.Errorf("sensor>sensor cell %+v", c)
	}
	if c, ok := cells["server>server"]; ok {
		t.Errorf("a role with one node has no cell with itself: %+v", c)
	}
	// Per-node audits see the role bindings from the deployment file: the
	// working sensor's events are documented at the server.
	for _, n := range r.Nodes {
		if n.Name != "server" {
			continue
		}
		for _, rs := range n.Report.Rules {
			if rs.Rule.ID == "t1.server.events.from-sensor" && rs.Status != StatusSeen {
				t.Errorf("server's events rule %s, want seen", rs.Status)
			}
		}
	}
	if r.AtLeast(High) < 4 {
		t.Errorf("AtLeast(high) = %d", r.AtLeast(High))
	}
}

// TestDeploymentRequired: a required flow seen at neither end, refused at
// the receiver, dropped by the receiver's own firewall, and answered but
// missing from the receiver's recording.
func TestDeploymentRequired(t *testing.T) {
	win := 10 * time.Minute
	for _, c := range []struct {
		name       string
		sender     []snapshot.Flow
		receiver   []snapshot.Flow
		id         string
		sev        Severity
		sumHas     string
		noFindings bool
	}{
		{name: "neither", id: "cross-required-missing/sensor-a>server/tcp/40001", sev: Medium, sumHas: "seen at neither end"},
		{name: "refused",
			sender:   []snapshot.Flow{depFlow("out", "tcp", 40001, "10.9.0.1", 2, 2, snapshot.Evidence{SynOut: 2, RstIn: 2})},
			receiver: []snapshot.Flow{depFlow("in", "tcp", 40001, "10.3.0.11", 2, 2, snapshot.Evidence{SynIn: 2, RstOut: 2})},
			id:       "cross-refused/sensor-a>server/tcp/40001", sev: High, sumHas: "does not listen"},
		{name: "receiver firewall",
			sender:   []snapshot.Flow{depFlow("out", "tcp", 40001, "10.9.0.1", 0, 3, synOut)},
			receiver: []snapshot.Flow{depFlow("in", "tcp", 40001, "10.3.0.11", 3, 0, snapshot.Evidence{SynIn: 3})},
			id:       "cross-refused/sensor-a>server/tcp/40001", sev: High, sumHas: "own firewall"},
		{name: "receiver blind",
			sender: []snapshot.Flow{depFlow("out", "tcp", 40001, "10.9.0.1", 20, 20, openOut)},
			id:     "one-sided/sensor-a>server/tcp/40001", sev: Low, sumHas: "was answered"},
		{name: "works",
			sender:     []snapshot.Flow{depFlow("out", "tcp", 40001, "10.9.0.1", 20, 20, openOut)},
			receiver:   []snapshot.Flow{depFlow("in", "tcp", 40001, "10.3.0.11", 20, 20, synAck(1))},
			noFindings: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			okB := []snapshot.Flow{depFlow("out", "tcp", 40001, "10.9.0.1", 9, 9, openOut)}
			recv := append(slices.Clone(c.receiver), depFlow("in", "tcp", 40001, "10.3.0.12", 9, 9, synAck(1)))
			in := deploymentInput(t, "", map[string]*snapshot.Snapshot{"server": snap(win, recv...), "sensor-a": snap(win, c.sender...), "sensor-b": snap(win, okB...)})
			r, err := RunDeployment(in, depOptions())
			if err != nil {
				t.Fatal(err)
			}
			got := crossIDs(r)
			if c.noFindings {
				if len(got) != 0 {
					t.Fatalf("findings %v, want none", got)
				}
				return
			}
			if len(got) != 1 || got[0] != (crossWant{c.id, c.sev}) {
				t.Fatalf("findings %v, want only %s (%s)", got, c.id, c.sev)
			}
			if !strings.Contains(r.Findings[0].Summary, c.sumHas) {
				t.Errorf("summary %q lacks %q", r.Findings[0].Summary, c.sumHas)
			}
		})
	}
}

// TestAuditDeploymentFiles: the file, its site, snapshots by relative path
// and over HTTP (a 404 is a missing node, never a skipped one).
func TestAuditDeploymentFiles(t *testing.T) {
	dir := t.TempDir()
	win := 10 * time.Minute
	write := func(name string, s *snapshot.Snapshot) {
		if err := snapshot.WriteFile(filepath.Join(dir, name), s); err != nil {
			t.Fatal(err)
		}
	}
	write("server.json", snap(win, depFlow("in", "tcp", 40001, "10.3.0.11", 9, 9, synAck(1))))
	served := snap(win, depFlow("out", "tcp", 40001, "10.9.0.1", 9, 9, openOut))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/sensor-a.json" {
			http.NotFound(w, r)
			return
		}
		_ = snapshot.Write(w, served)
	}))
	defer srv.Close()
	site, _ := os.ReadFile("testdata/engine/site.yaml")
	os.WriteFile(filepath.Join(dir, "site.yaml"), site, 0o644)
	cat, _ := filepath.Abs("testdata/engine/testapp.yaml")
	dep := fmt.Sprintf(`matrix: testapp
site: site.yaml
catalogs: [%s]
nodes:
  - {name: server, role: server, snapshot: server.json, addresses: [10.9.0.1]}
  - {name: sensor-a, role: sensor, snapshot: "%s/sensor-a.json", addresses: [10.3.0.11]}
  - {name: sensor-b, role: sensor, snapshot: "%s/gone.json", addresses: [10.3.0.12]}
`, cat, srv.URL, srv.URL)
	path := filepath.Join(dir, "deployment.yaml")
	os.WriteFile(path, []byte(dep), 0o644)
	r, err := AuditDeployment(path, depOptions())
	if err != nil {
		t.Fatal(err)
	}
	got := crossIDs(r)
	want := []crossWant{{"node-incomplete/sensor-b/missing", High}}
	if !slices.Equal(got, want) {
		t.Fatalf("findings %v, want %v", got, want)
	}
	if !strings.Contains(r.Findings[0].Summary, "404") {
		t.Errorf("summary lacks the HTTP status: %s", r.Findings[0].Summary)
	}
	if r.Nodes[1].Report == nil || r.Nodes[1].Report.Snapshot.Flows != 1 {
		t.Errorf("the fetched snapshot was not audited: %+v", r.Nodes[1])
	}
	// A role the product does not have is an error at its node's line.
	os.WriteFile(path, []byte("matrix: testapp\ncatalogs: ["+cat+"]\nnodes:\n  - {name: x, role: manager, snapshot: a.json, addresses: [10.0.0.1]}\n"), 0o644)
	if _, err := AuditDeployment(path, depOptions()); err == nil || !strings.Contains(err.Error(), path+":4:") || !strings.Contains(err.Error(), `role "manager"`) {
		t.Errorf("unknown role: %v", err)
	}
}

// TestDeploymentFormats: every report format carries the nodes, the
// cross-node findings and the role × role view.
func TestDeploymentFormats(t *testing.T) {
	win := 10 * time.Minute
	in := deploymentInput(t, "", map[string]*snapshot.Snapshot{
		"server":   snap(win, depFlow("in", "tcp", 40001, "10.3.0.12", 9, 9, synAck(1))),
		"sensor-a": snap(win, depFlow("out", "tcp", 40001, "10.9.0.1", 3, 0, synOut), depFlow("out", "tcp", 8443, "10.3.0.12", 5, 5, openOut)),
		"sensor-b": snap(win, depFlow("out", "tcp", 40001, "10.9.0.1", 9, 9, openOut), depFlow("in", "tcp", 8443, "10.3.0.11", 5, 5, synAck(1))),
	})
	r, err := RunDeployment(in, depOptions())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, f := range Formats {
		var b strings.Builder
		if err := WriteDeployment(&b, r, f, RenderOptions{CatalogRoot: "testdata"}); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out[f] = b.String()
	}

	for _, s := range []string{"cross-node findings: 2 high", "high      one-sided                sensor-a (sensor)  server (server)    tcp/40001", "role × role (sender → receiver)",
		"=== node sensor-b (role sensor) ===", "sensor-b  sensor  10.3.0.12  ok"} {
		if !strings.Contains(out["table"], s) {
			t.Errorf("table lacks %q", s)
		}
	}
	var back DeploymentReport
	if err := json.Unmarshal([]byte(out["json"]), &back); err != nil || len(back.Findings) != len(r.Findings) || len(back.Nodes) != 3 || back.Nodes[0].Report == nil {
		t.Errorf("json does not round-trip: %v", err)
	}
	for _, s := range []string{`<table class="grid">`, `td class="sev-cell-high"`, "tcp/40001 required", "tcp/8443 open", "one-sided/sensor-a&gt;server/tcp/40001", `id="node-sensor-b"`} {
		if !strings.Contains(out["html"], s) {
			t.Errorf("html lacks %q", s)
		}
	}
	var ju struct {
		Failures int `xml:"failures,attr"`
		Suites   []struct {
			Name     string `xml:"name,attr"`
			Failures int    `xml:"failures,attr"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal([]byte(out["junit"]), &ju); err != nil || len(ju.Suites) != 7 || ju.Suites[0].Failures != 2 || ju.Suites[4].Name != "sensor-a: findings" {
		t.Errorf("junit: %v %+v", err, ju)
	}
	var sa struct {
		Runs []struct {
			AutomationDetails struct{ ID string } `json:"automationDetails"`
			Results           []struct {
				RuleID    string `json:"ruleId"`
				Locations []struct {
					PhysicalLocation struct {
						ArtifactLocation struct{ URI string }    `json:"artifactLocation"`
						Region           struct{ StartLine int } `json:"region"`
					} `json:"physicalLocation"`
				} `json:"locations"`
			} `json:"results"`
		} `json:"runs"`
	}
	if err := validateJSON(sarifValidator(t), []byte(out["sarif"])); err != nil {
		t.Errorf("deployment SARIF does not validate against the SARIF 2.1.0 schema: %v", err)
	}
	if err := json.Unmarshal([]byte(out["sarif"]), &sa); err != nil || len(sa.Runs) != 4 {
		t.Fatalf("sarif: %v, %d runs", err, len(sa.Runs))
	}
	ids := map[string]bool{}
	for _, run := range sa.Runs {
		ids[run.AutomationDetails.ID] = true
	}
	if len(ids) != 4 || !ids["flowaudit/testapp@1.5/deployment/"] || !ids["flowaudit/testapp@1.5/sensor/sensor-a/"] {
		t.Errorf("sarif automation IDs %v", ids)
	}
	for _, res := range sa.Runs[0].Results {
		loc := res.Locations[0].PhysicalLocation
		if res.RuleID == "one-sided" && (loc.Region.StartLine != 8 || !strings.HasSuffix(loc.ArtifactLocation.URI, "deployment.yaml")) {
			t.Errorf("one-sided located at %+v, want deployment.yaml line 8 (sensor-a)", loc)
		}
	}
}

// TestDeploymentWindowSlack: traffic a little outside the other end's
// window (two recorders' clocks and last reads differ) is still matched;
// traffic well outside it is not expected there.
func TestDeploymentWindowSlack(t *testing.T) {
	win := 10 * time.Minute
	for _, c := range []struct {
		shift time.Duration
		want  []crossWant
	}{
		{time.Second, nil},
		{time.Minute, []crossWant{{"one-sided/sensor-a>server/tcp/40001", Low}}},
	} {
		recv := depFlow("in", "tcp", 40001, "10.3.0.11", 9, 9, synAck(1))
		recv.FirstSeen, recv.LastSeen = t0.Add(win+c.shift), t0.Add(win+c.shift)
		server := snap(win+2*time.Minute, recv, depFlow("in", "tcp", 40001, "10.3.0.12", 9, 9, synAck(1)))
		sender := depFlow("out", "tcp", 40001, "10.9.0.1", 9, 9, openOut)
		sender.FirstSeen, sender.LastSeen = t0.Add(win-time.Second), t0.Add(win-time.Second)
		in := deploymentInput(t, "", map[string]*snapshot.Snapshot{"server": server, "sensor-a": snap(win, sender),
			"sensor-b": snap(win, depFlow("out", "tcp", 40001, "10.9.0.1", 9, 9, openOut))})
		r, err := RunDeployment(in, depOptions())
		if err != nil {
			t.Fatal(err)
		}
		if got := crossIDs(r); !slices.Equal(got, c.want) {
			t.Errorf("receiver's flow %s after the sender's window: findings %v, want %v", c.shift, got, c.want)
		}
	}
}
