package audit

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

// -update rewrites the golden files (go test ./audit -run Golden -update).
// Another test file of the package may define the flag too; whoever comes
// first registers it, the others look it up.
func init() {
	if flag.Lookup("update") == nil {
		flag.Bool("update", false, "rewrite the golden files under testdata/")
	}
}

func updating() bool {
	f := flag.Lookup("update")
	return f != nil && f.Value.String() == "true"
}

const renderDir = "testdata/render"

var (
	fixStart = time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)
	fixEnd   = fixStart.Add(30 * time.Minute)
	fixNow   = fixEnd.Add(90 * time.Second)
)

// fixtureFlow is one flow of the fixture snapshot.
func fixtureFlow(dir snapshot.Direction, proto snapshot.Proto, port uint16, peer string, in, out uint64, ev snapshot.Evidence, startMin, endMin int) snapshot.Flow {
	return snapshot.Flow{
		Interface: "eth0", Direction: dir, Proto: proto, Port: port, Peer: netip.MustParseAddr(peer),
		PacketsIn: in, BytesIn: in * 120, PacketsOut: out, BytesOut: out * 200,
		FirstSeen: fixStart.Add(time.Duration(startMin) * time.Minute),
		LastSeen:  fixStart.Add(time.Duration(endMin) * time.Minute),
		Evidence:  ev,
	}
}

// fixtureSnapshot is a 30-minute window on a UTMStack 11 manager with
// documented traffic, every rule status and most finding kinds.
func fixtureSnapshot() *snapshot.Snapshot {
	in, out, unk := snapshot.Inbound, snapshot.Outbound, snapshot.Unknown
	tcp, udp := snapshot.TCP, snapshot.UDP
	open := func(syn uint64) snapshot.Evidence { return snapshot.Evidence{SynIn: syn, SynAckOut: syn} }
	refused := snapshot.Evidence{SynIn: 1, RstOut: 1}
	flows := []snapshot.Flow{
		// SSH from the admin (seen) and from outside ADMIN_IP (peer-out-of-zone).
		fixtureFlow(in, tcp, 22, "192.0.2.10", 420, 390, open(3), 1, 28),
		fixtureFlow(in, tcp, 22, "203.0.113.50", 30, 25, open(2), 12, 13),
		// Web interface from the SOC network.
		fixtureFlow(in, tcp, 443, "198.51.100.5", 5200, 6100, open(40), 0, 30),
		fixtureFlow(in, tcp, 443, "198.51.100.6", 800, 900, open(8), 5, 25),
		// Agents.
		fixtureFlow(in, tcp, 9000, "10.10.1.1", 1500, 1400, open(2), 0, 30),
		fixtureFlow(in, tcp, 9000, "10.10.1.2", 1200, 1100, open(2), 0, 30),
		fixtureFlow(in, tcp, 9001, "10.10.1.1", 90000, 45000, open(1), 0, 30),
		fixtureFlow(in, tcp, 9001, "10.10.1.2", 60000, 30000, open(1), 0, 30),
		// gRPC refused: required-port-closed.
		fixtureFlow(in, tcp, 50051, "10.10.1.1", 6, 6, snapshot.Evidence{SynIn: 6, RstOut: 6}, 2, 20),
		// Syslog over UDP from a source (optional-in-use).
		fixtureFlow(in, udp, 514, "10.20.0.7", 2500, 0, snapshot.Evidence{}, 0, 30),
		// HTTP from the unbound ANALYST_NETWORK: unverified.
		fixtureFlow(in, tcp, 80, "10.50.0.3", 12, 10, open(1), 7, 7),
		// Undocumented open port.
		fixtureFlow(in, tcp, 8080, "198.51.100.5", 60, 80, open(4), 3, 17),
		// Undocumented outbound HTTPS.
		fixtureFlow(out, tcp, 443, "203.0.113.80", 1500, 700, snapshot.Evidence{SynOut: 10, SynAckIn: 10}, 0, 29),
		// Ping answered.
		fixtureFlow(in, snapshot.ICMP, 8<<8, "192.0.2.10", 20, 20, snapshot.Evidence{}, 4, 5),
		// A worker tries the swarm gossip port without multi-node: refused.
		fixtureFlow(in, tcp, 7946, "10.40.0.5", 3, 3, snapshot.Evidence{SynIn: 3, RstOut: 3}, 9, 9),
		// GRE of unknown direction.
		fixtureFlow(unk, snapshot.GRE, 0, "203.0.113.9", 50, 50, snapshot.Evidence{}, 10, 20),
		// Not audited: an ICMP error and a fragment.
		fixtureFlow(unk, snapshot.ICMP, 3<<8|3, "203.0.113.80", 5, 0, snapshot.Evidence{}, 6, 6),
		{Interface: "eth0", Direction: unk, Proto: udp, Fragment: true, Peer: netip.MustParseAddr("203.0.113.9"),
			PacketsIn: 4, BytesIn: 5600, FirstSeen: fixStart.Add(time.Minute), LastSeen: fixStart.Add(time.Minute)},
	}
	// A scanner: twelve undocumented ports, all refused.
	for i, p := range []uint16{21, 23, 25, 110, 135, 139, 445, 1433, 3389, 5900, 8443, 9200} {
		flows = append(flows, fixtureFlow(in, tcp, p, "198.18.0.99", 1, 1, refused, 20, 20+i/6))
	}
	s := &snapshot.Snapshot{
		Version: snapshot.FormatVersion, Hostname: "utm-manager-01", Kernel: "6.1.0-18-amd64", Source: "live",
		Interfaces: []snapshot.Interface{{Name: "eth0", Index: 2, Ingress: "xdp-native", Egress: "tcx",
			Addresses: []netip.Addr{netip.MustParseAddr("10.0.0.2")}}},
		Start: fixStart, End: fixEnd, EphemeralPorts: [2]uint16{32768, 60999},
		Listening: []snapshot.Socket{
			{Proto: tcp, Addr: netip.MustParseAddr("0.0.0.0"), Port: 22},
			{Proto: tcp, Addr: netip.MustParseAddr("0.0.0.0"), Port: 3306},
			{Proto: tcp, Addr: netip.MustParseAddr("127.0.0.1"), Port: 6379},
		},
		Flows: flows,
	}
	s.Tool.Name, s.Tool.Version = "flowaudit", "v0.3.0-test"
	var pin, pout uint64
	for _, f := range flows {
		pin += f.PacketsIn
		pout += f.PacketsOut
	}
	s.Stats = snapshot.Stats{
		FlowCapacity: 65536, FlowEntries: uint32(len(flows)), ConnInsertFailed: 2,
		PacketsIngress: pin, PacketsEgress: pout, Truncated: 1,
		NonIP: map[string]snapshot.Counter{"0x0806": {Packets: 40, Bytes: 2400}, "0x88cc": {Packets: 3, Bytes: 360}},
	}
	s.Sort()
	return s
}

// fixtureReport audits fixtureSnapshot against the built-in UTMStack 11
// manager matrix and testdata/render/site.yaml.
func fixtureReport(t testing.TB) *Report {
	t.Helper()
	return fixtureReportOf(t, fixtureSnapshot())
}

// fixtureReportOf audits snap like fixtureReport.
func fixtureReportOf(t testing.TB, snap *snapshot.Snapshot) *Report {
	t.Helper()
	c, err := catalog.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	p, v, err := c.Resolve("utmstack@11")
	if err != nil {
		t.Fatal(err)
	}
	m, err := p.Effective(v, "manager", nil)
	if err != nil {
		t.Fatal(err)
	}
	sitePath := renderDir + "/site.yaml"
	data, err := os.ReadFile(sitePath)
	if err != nil {
		t.Fatal(err)
	}
	site, err := catalog.ParseSite(sitePath, data)
	if err != nil {
		t.Fatal(err)
	}
	if err := site.Check(p, v); err != nil {
		t.Fatalf("fixture site does not fit utmstack@11: %v", err)
	}
	if err := snap.Validate(); err != nil {
		t.Fatalf("fixture snapshot: %v", err)
	}
	r, err := Run(snap, Options{Matrix: m, Site: site, ToolVersion: "v0.3.0-test", Now: func() time.Time { return fixNow }})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestRenderFixture guards the fixture itself: the goldens are only worth
// something if it exercises what the formats have to show.
func TestRenderFixture(t *testing.T) {
	r := fixtureReport(t)
	kinds := map[Kind]bool{}
	withRule, withoutRule := 0, 0
	sevs := map[Severity]bool{}
	for _, f := range r.Findings {
		kinds[f.Kind] = true
		sevs[f.Severity] = true
		if f.Rule != nil {
			withRule++
		} else {
			withoutRule++
		}
	}
	for _, k := range []Kind{UnexpectedOpenPort, UndocumentedFlow, PeerOutOfZone, MissingRequired, RequiredPortClosed, ScanSuspected, AuditIncomplete, OptionalInUse} {
		if !kinds[k] {
			t.Errorf("fixture has no %s finding", k)
		}
	}
	for _, s := range []Severity{Info, Low, Medium, High} {
		if !sevs[s] {
			t.Errorf("fixture has no %s finding", s)
		}
	}
	if withRule == 0 || withoutRule == 0 {
		t.Errorf("fixture findings with rule %d, without %d: want both", withRule, withoutRule)
	}
	docRows, undocRows := 0, 0
	for _, o := range r.Observed {
		if o.Documented {
			docRows++
		} else {
			undocRows++
		}
	}
	if docRows == 0 || undocRows == 0 {
		t.Errorf("heat-map rows: %d documented, %d undocumented: want both", docRows, undocRows)
	}
	statuses := map[string]bool{}
	for _, rs := range r.Rules {
		statuses[rs.Status] = true
	}
	for _, s := range []string{StatusSeen, StatusUnverified, StatusClosed, StatusNotSeen} {
		if !statuses[s] {
			t.Errorf("no rule with status %s", s)
		}
	}
	if len(r.Columns) < 3 || !strings.HasPrefix(r.Columns[len(r.Columns)-2], "role:") {
		t.Errorf("columns %v: want zones, a role and other", r.Columns)
	}
}

func render(t testing.TB, r *Report, format string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Write(&buf, r, format, RenderOptions{}); err != nil {
		t.Fatalf("%s: %v", format, err)
	}
	return buf.Bytes()
}

func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join(renderDir, name)
	if updating() {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./audit -run Golden -update)", err)
	}
	if !bytes.Equal(got, want) {
		gl, wl := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
		for i := 0; i < len(gl) || i < len(wl); i++ {
			var g, w string
			if i < len(gl) {
				g = gl[i]
			}
			if i < len(wl) {
				w = wl[i]
			}
			if g != w {
				t.Errorf("%s differs from the golden file at line %d:\n got: %q\nwant: %q\n(rerun with -update if the change is intended)", path, i+1, g, w)
				return
			}
		}
	}
}

func TestGoldenReports(t *testing.T) {
	r := fixtureReport(t)
	for _, tc := range []struct{ format, file string }{
		{"table", "report.txt"},
		{"json", "report.json"},
		{"html", "report.html"},
		{"junit", "report.junit.xml"},
		{"sarif", "report.sarif"},
	} {
		t.Run(tc.format, func(t *testing.T) {
			got := render(t, r, tc.format)
			// Deterministic: a second rendering of a fresh audit is identical.
			if again := render(t, fixtureReport(t), tc.format); !bytes.Equal(got, again) {
				t.Fatalf("%s output is not deterministic", tc.format)
			}
			checkGolden(t, tc.file, got)
		})
	}
}

func TestWriteFormats(t *testing.T) {
	r := fixtureReport(t)
	for _, f := range Formats {
		if out := render(t, r, f); len(out) < 100 {
			t.Errorf("%s: %d bytes", f, len(out))
		}
	}
	if err := Write(io.Discard, r, "pdf", RenderOptions{}); err == nil {
		t.Error("unknown format accepted")
	}
}

func TestTableColor(t *testing.T) {
	r := fixtureReport(t)
	var plain, color bytes.Buffer
	if err := WriteTable(&plain, r, false); err != nil {
		t.Fatal(err)
	}
	if err := WriteTable(&color, r, true); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(plain.Bytes(), []byte("\x1b[")) {
		t.Error("table without colour has ANSI escapes")
	}
	if !bytes.Contains(color.Bytes(), []byte(ansiBold+ansiRed+"high"+ansiReset)) {
		t.Error("table with colour does not colour high findings")
	}
}

// --- HTML -------------------------------------------------------------------

// hostile is what an attacker-controlled string (a crafted catalog, site
// path, interface or host name) might contain.
const hostile = `<script>alert("x")</script><img src=x onerror=alert(1)>&amp;'"`

func TestHTMLEscapes(t *testing.T) {
	r := fixtureReport(t)
	r.Findings[0].Summary = "summary " + hostile
	r.Findings[0].ID = "id/" + hostile
	r.Snapshot.Hostname = hostile
	r.Snapshot.Interfaces[0].Name = hostile
	r.Site = hostile
	r.Rules[0].Rule.Purpose = hostile
	r.Rules[0].Rule.Citation.Section = hostile
	for i := range r.Findings {
		if r.Findings[i].Rule != nil {
			r.Findings[i].Rule.Citation.Quote = hostile
			break
		}
	}
	out := string(render(t, r, "html"))
	for _, bad := range []string{"<script", "<img", `alert("x")`, `" onerror`, "' onerror"} {
		if strings.Contains(strings.ToLower(out), strings.ToLower(bad)) {
			t.Errorf("HTML contains %q unescaped", bad)
		}
	}
	// The ID also lands in an attribute: its quotes must not end it.
	if !strings.Contains(out, `data-finding="id/&lt;script&gt;alert(&#34;x&#34;)`) {
		t.Error("hostile ID not escaped inside the data-finding attribute")
	}
	want := `&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;&amp;amp;&#39;&#34;`
	if n := strings.Count(out, want); n < 6 {
		t.Errorf("escaped hostile string appears %d times, want at least 6 (summary, id, host, interface, site, purpose, citation…)", n)
	}
}

var attrURL = regexp.MustCompile(`(?i)\b(src|href|action|srcset|poster|data)\s*=\s*"([^"]*)"`)

func TestHTMLSelfContained(t *testing.T) {
	for _, r := range []*Report{fixtureReport(t), fixtureReportOf(t, partialSnapshot())} {
		checkSelfContained(t, string(render(t, r, "html")))
	}
}

func checkSelfContained(t *testing.T, out string) {
	t.Helper()
	for _, bad := range []string{"http://", "https://", "<script", "<link", "<iframe", "<img", "<object", "<embed", "@import", "url("} {
		if strings.Contains(strings.ToLower(out), bad) {
			t.Errorf("HTML report contains %q", bad)
		}
	}
	for _, m := range attrURL.FindAllStringSubmatch(out, -1) {
		if !strings.HasPrefix(m[2], "#") {
			t.Errorf("%s=%q is not an in-page link", m[1], m[2])
		}
	}
	// Every in-page link has its target.
	for _, m := range attrURL.FindAllStringSubmatch(out, -1) {
		if !strings.Contains(out, `id="`+m[2][1:]+`"`) {
			t.Errorf("link %s has no target", m[2])
		}
	}
	if !strings.Contains(out, `http-equiv="Content-Security-Policy" content="default-src 'none';`) {
		t.Error("no Content-Security-Policy forbidding remote loads")
	}
}

func TestHTMLIncompleteBanner(t *testing.T) {
	r := fixtureReport(t)
	if out := string(render(t, r, "html")); strings.Contains(out, "INCOMPLETE") || !strings.Contains(out, "complete, no packet lost") {
		t.Error("a complete snapshot is shown as incomplete")
	}
	snap := fixtureSnapshot()
	snap.Stats.FlowInsertFailed, snap.Stats.OverflowInsertFailed, snap.Stats.FlowEvictions = 1234, 1234, 7
	r = fixtureReportOf(t, snap)
	out := string(render(t, r, "html"))
	for _, want := range []string{
		`<div class="incomplete" role="alert"><strong>INCOMPLETE SNAPSHOT</strong>`,
		"1234 packets were not counted and 7 flows were evicted",
		"INCOMPLETE, packets were lost",
		`<td class="num bad">1234 (lost)</td>`,
		`<div class="partial" id="coverage" role="note">`,
		"<li>not counted: 1234 packets (the overflow map was full too), 7 flows evicted</li>",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("lossy snapshot: HTML lacks %q", want)
		}
	}
	// The banner comes before any finding.
	if strings.Index(out, "INCOMPLETE SNAPSHOT") > strings.Index(out, `id="findings"`) {
		t.Error("incomplete banner is not at the top")
	}
}

var (
	heatRowRE  = regexp.MustCompile(`(?s)<tr class="(doc|undoc)" data-row="([^"]*)">(.*?)</tr>`)
	heatCellRE = regexp.MustCompile(`<td class="heat l(\d)( oz)?" title="([^"]*)">(\d+)(?:<br><small>(\d+) out of zone</small>)?</td>`)
)

func TestHTMLHeatmap(t *testing.T) {
	r := fixtureReport(t)
	out := string(render(t, r, "html"))
	start := strings.Index(out, `<table class="heatmap wide" id="heatmap">`)
	if start < 0 {
		t.Fatal("no heat-map table")
	}
	table := out[start : start+strings.Index(out[start:], "</table>")]
	for _, c := range r.Columns {
		if !strings.Contains(table, `<th scope="col">`+htmlEsc(columnLabel(c))+`</th>`) {
			t.Errorf("no column header for %s", c)
		}
	}
	rows := heatRowRE.FindAllStringSubmatch(table, -1)
	if len(rows) != len(r.Observed) {
		t.Fatalf("heat-map has %d rows, report %d observed services", len(rows), len(r.Observed))
	}
	var maxp uint64
	for _, o := range r.Observed {
		for _, p := range o.Cells {
			maxp = max(maxp, p)
		}
	}
	levels := map[int]bool{}
	ozCells := 0
	for i, row := range rows {
		o := r.Observed[i]
		svc := fmt.Sprintf("%s %s/%s", o.Direction, o.Proto, o.Port)
		if row[2] != svc {
			t.Errorf("row %d is %q, want %q", i, row[2], svc)
		}
		wantClass, wantTag := "undoc", "UNDOCUMENTED"
		if o.Documented {
			wantClass, wantTag = "doc", ">documented<"
		}
		if row[1] != wantClass || !strings.Contains(row[3], wantTag) {
			t.Errorf("row %s: class %q, want %q with label %q", svc, row[1], wantClass, wantTag)
		}
		cells := heatCellRE.FindAllStringSubmatch(row[3], -1)
		if len(cells) != len(r.Columns) {
			t.Fatalf("row %s has %d cells, want %d", svc, len(cells), len(r.Columns))
		}
		for j, c := range r.Columns {
			want := o.Cells[c]
			got, _ := strconv.ParseUint(cells[j][4], 10, 64)
			level, _ := strconv.Atoi(cells[j][1])
			if got != want {
				t.Errorf("%s × %s shows %d packets, want %d", svc, c, got, want)
			}
			if level != heatLevel(want, maxp) {
				t.Errorf("%s × %s level %d, want %d", svc, c, level, heatLevel(want, maxp))
			}
			if !strings.Contains(cells[j][3], strconv.FormatUint(want, 10)+" packets") {
				t.Errorf("%s × %s tooltip %q lacks the count", svc, c, cells[j][3])
			}
			// Out-of-zone traffic on a documented port is not coloured
			// like compliant traffic: crimson, marked, counted.
			oz := o.OutOfZone[c]
			if (cells[j][2] == " oz") != (o.Documented && oz > 0) || (oz > 0 && o.Documented && cells[j][5] != strconv.FormatUint(oz, 10)) {
				t.Errorf("%s × %s: class %q, %q out of zone; want %d packets out of zone marked", svc, c, cells[j][2], cells[j][5], oz)
			}
			if oz > 0 && o.Documented {
				ozCells++
				if !strings.Contains(row[3], "OUT OF ZONE") || !strings.Contains(cells[j][3], "OUTSIDE the documented zone") {
					t.Errorf("%s: out-of-zone traffic without the row tag or the tooltip", svc)
				}
			}
			levels[level] = true
		}
	}
	// The fixture's SSH from 203.0.113.50 is out of zone (no zone of the site).
	for _, o := range r.Observed {
		if o.Proto == "tcp" && o.Port == "22" && o.OutOfZone["other"] != 55 {
			t.Errorf("tcp/22 out of zone %v, want 55 packets in column other", o.OutOfZone)
		}
	}
	if ozCells == 0 {
		t.Error("no out-of-zone cell in the heat-map")
	}
	if !strings.Contains(out, `<td class="heat oz l9">`) {
		t.Error("the legend has no out-of-zone row")
	}
	if len(levels) < 5 {
		t.Errorf("heat-map uses %d colour levels, want a spread (≥5)", len(levels))
	}
}

func TestHeatLevel(t *testing.T) {
	if heatLevel(0, 100) != 0 || heatLevel(1, 1) != heatLevels || heatLevel(1, 100) != 1 || heatLevel(100, 100) != heatLevels {
		t.Fatal("heatLevel end points wrong")
	}
	for _, maxp := range []uint64{2, 3, 10, 99, 1000, 135000} {
		prev := 0
		for p := uint64(1); p <= maxp; p++ {
			l := heatLevel(p, maxp)
			if l < prev || l < 1 || l > heatLevels {
				t.Fatalf("max %d: level(%d) = %d after %d", maxp, p, l, prev)
			}
			prev = l
			// The legend names the range p falls in.
			lt := legendText(l, maxp)
			lo, hi, ok := parseRange(lt)
			if !ok || p < lo || p > hi {
				t.Fatalf("max %d: %d packets are level %d, whose legend says %q", maxp, p, l, lt)
			}
		}
	}
}

func parseRange(s string) (lo, hi uint64, ok bool) {
	a, b, isRange := strings.Cut(s, "–")
	lo, err := strconv.ParseUint(a, 10, 64)
	if err != nil {
		return 0, 0, false
	}
	if !isRange {
		return lo, lo, true
	}
	hi, err = strconv.ParseUint(b, 10, 64)
	return lo, hi, err == nil
}

func TestHTMLContent(t *testing.T) {
	r := fixtureReport(t)
	out := string(render(t, r, "html"))
	for _, f := range r.Findings {
		for _, want := range []string{
			`data-finding="` + htmlEsc(f.ID) + `"`,
			`<p class="summary">` + htmlEsc(f.Summary) + `</p><code class="fid">` + htmlEsc(f.ID) + `</code>`,
			`<span class="sev sev-` + f.Severity.String() + `">` + f.Severity.String() + `</span>`,
		} {
			if !strings.Contains(out, want) {
				t.Errorf("finding %s: HTML lacks %q", f.ID, want)
			}
		}
		if f.Rule != nil && !strings.Contains(out, htmlEsc(citationText(f.Rule.Citation))) {
			t.Errorf("finding %s: citation missing", f.ID)
		}
	}
	for _, rs := range r.Rules {
		want := `<span class="status st-` + rs.Status
		if !strings.Contains(out, `<th scope="row"><code>`+htmlEsc(rs.Rule.ID)+`</code></th>`) || !strings.Contains(out, want) {
			t.Errorf("rule %s (%s) missing from the matrix table", rs.Rule.ID, rs.Status)
		}
	}
	for _, want := range []string{`<html lang="en">`, "<caption>", `<th scope="col">Severity</th>`, r.Snapshot.Window, "eth0", "utm-manager-01"} {
		if !strings.Contains(out, want) {
			t.Errorf("HTML lacks %q", want)
		}
	}
}

// htmlEsc is what html/template makes of a text value.
func htmlEsc(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&#34;", "'", "&#39;", "+", "&#43;").Replace(s)
}

// --- JUnit ------------------------------------------------------------------

// The JUnit shape read back, independently of junit.go's types.
type jSuites struct {
	XMLName  xml.Name `xml:"testsuites"`
	Tests    int      `xml:"tests,attr"`
	Failures int      `xml:"failures,attr"`
	Errors   int      `xml:"errors,attr"`
	Skipped  int      `xml:"skipped,attr"`
	Suites   []struct {
		Name     string `xml:"name,attr"`
		Tests    int    `xml:"tests,attr"`
		Failures int    `xml:"failures,attr"`
		Errors   int    `xml:"errors,attr"`
		Skipped  int    `xml:"skipped,attr"`
		Time     string `xml:"time,attr"`
		Stamp    string `xml:"timestamp,attr"`
		Props    []struct {
			Name  string `xml:"name,attr"`
			Value string `xml:"value,attr"`
		} `xml:"properties>property"`
		Cases []jCase `xml:"testcase"`
	} `xml:"testsuite"`
}

type jCase struct {
	Name      string `xml:"name,attr"`
	Classname string `xml:"classname,attr"`
	Time      string `xml:"time,attr"`
	Failure   []struct {
		Message string `xml:"message,attr"`
		Type    string `xml:"type,attr"`
		Text    string `xml:",chardata"`
	} `xml:"failure"`
	Error     []struct{} `xml:"error"`
	Skipped   []struct{} `xml:"skipped"`
	SystemOut string     `xml:"system-out"`
}

func parseJUnit(t *testing.T, data []byte) jSuites {
	t.Helper()
	// Well-formed to the last token.
	d := xml.NewDecoder(bytes.NewReader(data))
	for {
		if _, err := d.Token(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("JUnit XML not well-formed: %v", err)
		}
	}
	var s jSuites
	if err := xml.Unmarshal(data, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestJUnit(t *testing.T) {
	r := fixtureReport(t)
	out := render(t, r, "junit")
	if !bytes.HasPrefix(out, []byte(`<?xml version="1.0" encoding="UTF-8"?>`)) {
		t.Error("no XML declaration")
	}
	s := parseJUnit(t, out)
	if len(s.Suites) != 2 {
		t.Fatalf("%d suites, want 2 (matrix, findings)", len(s.Suites))
	}
	var tests, failures int
	for _, su := range s.Suites {
		fails := 0
		for _, c := range su.Cases {
			if len(c.Failure) > 1 || len(c.Error) > 0 || len(c.Skipped) > 0 {
				t.Errorf("%s: %d failures, %d errors, %d skipped: want at most one failure", c.Name, len(c.Failure), len(c.Error), len(c.Skipped))
			}
			fails += len(c.Failure)
			if c.Time != "0" {
				t.Errorf("%s: time %q", c.Name, c.Time)
			}
		}
		if su.Tests != len(su.Cases) || su.Failures != fails || su.Errors != 0 || su.Skipped != 0 {
			t.Errorf("suite %s: tests=%d failures=%d errors=%d skipped=%d, counted %d cases, %d failures",
				su.Name, su.Tests, su.Failures, su.Errors, su.Skipped, len(su.Cases), fails)
		}
		if su.Stamp != "2026-03-02T09:31:30" || su.Time != "0" {
			t.Errorf("suite %s: timestamp %q time %q", su.Name, su.Stamp, su.Time)
		}
		tests += su.Tests
		failures += su.Failures
	}
	if s.Tests != tests || s.Failures != failures || s.Errors != 0 || s.Skipped != 0 {
		t.Errorf("testsuites: tests=%d failures=%d errors=%d skipped=%d, suites sum to %d/%d", s.Tests, s.Failures, s.Errors, s.Skipped, tests, failures)
	}

	// Matrix: one case per rule, never failing; its system-out names the
	// rule's findings, the failing ones as failures of the findings suite.
	rules := s.Suites[0]
	if len(rules.Cases) != len(r.Rules) {
		t.Fatalf("matrix suite has %d cases, matrix %d rules", len(rules.Cases), len(r.Rules))
	}
	for i, rs := range r.Rules {
		c := rules.Cases[i]
		if !strings.HasPrefix(c.Name, rs.Rule.ID+" ") || !strings.Contains(c.Name, rs.Rule.Proto+"/"+rs.Rule.Ports) {
			t.Errorf("case %q for rule %s", c.Name, rs.Rule.ID)
		}
		if c.Classname != "utmstack.manager" {
			t.Errorf("case %s classname %q", c.Name, c.Classname)
		}
		if len(c.Failure) != 0 {
			t.Errorf("rule %s fails in the matrix suite: its findings fail in the findings suite", rs.Rule.ID)
		}
		if !strings.Contains(c.SystemOut, "status: "+rs.Status) {
			t.Errorf("rule %s: system-out %q lacks the status", rs.Rule.ID, c.SystemOut)
		}
		for _, id := range rs.Findings {
			if !strings.Contains(c.SystemOut, id) {
				t.Errorf("rule %s: system-out lacks its finding %s", rs.Rule.ID, id)
			}
		}
	}
	if rules.Failures != 0 {
		t.Errorf("matrix suite failures %d, want 0", rules.Failures)
	}
	// Known outcomes of the fixture: the rule's case names its failing finding.
	for id, kind := range map[string]string{
		"utmstack11.manager.agent-50051": "required-port-closed",
		"utmstack11.manager.cockpit":     "missing-required",
		"utmstack11.manager.ssh":         "peer-out-of-zone",
	} {
		for i, rs := range r.Rules {
			if rs.Rule.ID == id && !strings.Contains(rules.Cases[i].SystemOut, kind+"/") {
				t.Errorf("rule %s: system-out lacks its %s finding:\n%s", id, kind, rules.Cases[i].SystemOut)
			}
		}
	}
	// One failure per finding at low or above, in all.
	if s.Failures != r.AtLeast(Low) {
		t.Errorf("%d failures for %d findings at low or above", s.Failures, r.AtLeast(Low))
	}
	failed := map[string]int{}
	for _, su := range s.Suites {
		for _, c := range su.Cases {
			if len(c.Failure) > 0 {
				failed[c.Name]++
			}
		}
	}
	for _, f := range r.Findings {
		if n := failed[f.ID]; (f.Severity >= Low) != (n == 1) || n > 1 {
			t.Errorf("finding %s (%s) fails %d times", f.ID, f.Severity, n)
		}
	}

	// Findings: one case each; failure for low and above, system-out for info.
	fs := s.Suites[1]
	if len(fs.Cases) != len(r.Findings) {
		t.Fatalf("findings suite has %d cases, report %d findings", len(fs.Cases), len(r.Findings))
	}
	infos := 0
	for i, f := range r.Findings {
		c := fs.Cases[i]
		if c.Name != f.ID || c.Classname != "utmstack.manager."+string(f.Kind) {
			t.Errorf("case %q/%q for finding %s", c.Classname, c.Name, f.ID)
		}
		if f.Severity >= Low {
			if len(c.Failure) != 1 || c.Failure[0].Type != string(f.Kind) || c.Failure[0].Message != f.Summary {
				t.Errorf("finding %s: failure %+v", f.ID, c.Failure)
			}
			continue
		}
		infos++
		if len(c.Failure) != 0 || !strings.HasPrefix(c.SystemOut, f.Summary) {
			t.Errorf("info finding %s: failure %v, system-out %q", f.ID, c.Failure, c.SystemOut)
		}
	}
	if infos == 0 || fs.Failures != len(r.Findings)-infos || fs.Failures != r.AtLeast(Low) {
		t.Errorf("findings suite: %d failures, %d info, %d at low or above", fs.Failures, infos, r.AtLeast(Low))
	}
}

func TestJUnitEscapes(t *testing.T) {
	r := fixtureReport(t)
	nasty := hostile + " ]]> \x01 tab\tnewline\nend"
	r.Findings[0].Summary = nasty
	r.Findings[0].ID = "id " + hostile
	r.Snapshot.Hostname = hostile
	out := render(t, r, "junit")
	if bytes.Contains(out, []byte("<script")) || bytes.Contains(out, []byte("<img")) {
		t.Fatal("markup not escaped")
	}
	s := parseJUnit(t, out)
	c := s.Suites[1].Cases[0]
	// XML 1.0 cannot carry U+0001; encoding/xml writes U+FFFD instead.
	if want := strings.ReplaceAll(nasty, "\x01", "\uFFFD"); c.Failure[0].Message != want {
		t.Errorf("message round-trips as %q, want %q", c.Failure[0].Message, want)
	}
	if c.Name != "id "+hostile {
		t.Errorf("name round-trips as %q", c.Name)
	}
}

// --- SARIF ------------------------------------------------------------------

const sarifSchemaFile = renderDir + "/sarif-schema-2.1.0.json"

func sarifValidator(t *testing.T) *jsonschema.Schema {
	t.Helper()
	f, err := os.Open(sarifSchemaFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	return compileSchema(t, c, "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json", f)
}

// compileSchema compiles the JSON Schema read from r, known as url.
func compileSchema(t *testing.T, c *jsonschema.Compiler, url string, r io.Reader) *jsonschema.Schema {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(r)
	if err != nil {
		t.Fatalf("%s: %v", url, err)
	}
	if err := c.AddResource(url, doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile(url)
	if err != nil {
		t.Fatalf("compile %s: %v", url, err)
	}
	return sch
}

// validateCatalogYAML validates a catalog file against the published
// catalog schema (catalog.CatalogSchema).
func validateCatalogYAML(t *testing.T, data []byte) error {
	t.Helper()
	sch := compileSchema(t, jsonschema.NewCompiler(), "catalog.schema.json", bytes.NewReader(catalog.CatalogSchema()))
	j, err := yaml.YAMLToJSON(data)
	if err != nil {
		return err
	}
	return validateJSON(sch, j)
}

func validateJSON(sch *jsonschema.Schema, data []byte) error {
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		return err
	}
	return sch.Validate(inst)
}

func TestSARIFSchema(t *testing.T) {
	sch := sarifValidator(t)
	r := fixtureReport(t)
	out := render(t, r, "sarif")
	if err := validateJSON(sch, out); err != nil {
		t.Fatalf("SARIF output does not validate against the 2.1.0 schema: %v", err)
	}
	// With a catalog root too.
	var buf bytes.Buffer
	if err := WriteSARIF(&buf, r, RenderOptions{CatalogRoot: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	if err := validateJSON(sch, buf.Bytes()); err != nil {
		t.Fatalf("SARIF with catalog root: %v", err)
	}
	// An empty audit validates as well.
	empty := &Report{Version: ReportVersion, Counts: map[string]int{}}
	buf.Reset()
	if err := WriteSARIF(&buf, empty, RenderOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := validateJSON(sch, buf.Bytes()); err != nil {
		t.Fatalf("empty SARIF: %v", err)
	}

	// The validator is not a rubber stamp: broken logs are refused.
	for name, mutate := range map[string]func(res map[string]any){
		"startLine 0":       func(res map[string]any) { loc(res)["region"].(map[string]any)["startLine"] = 0 },
		"no message":        func(res map[string]any) { delete(res, "message") },
		"bad level":         func(res map[string]any) { res["level"] = "fatal" },
		"no artifact":       func(res map[string]any) { delete(loc(res), "artifactLocation") },
		"unknown property":  func(res map[string]any) { res["severity"] = "high" },
		"fingerprint type":  func(res map[string]any) { res["partialFingerprints"] = map[string]any{"x": 1} },
		"uri not reference": func(res map[string]any) { loc(res)["artifactLocation"].(map[string]any)["uri"] = "a b\\c:%zz" },
	} {
		var log map[string]any
		if err := json.Unmarshal(out, &log); err != nil {
			t.Fatal(err)
		}
		res := log["runs"].([]any)[0].(map[string]any)["results"].([]any)[0].(map[string]any)
		mutate(res)
		data, _ := json.Marshal(log)
		if err := validateJSON(sch, data); err == nil {
			t.Errorf("schema accepts a log with %s", name)
		} else {
			var ve *jsonschema.ValidationError
			if !errors.As(err, &ve) {
				t.Errorf("%s: %v is not a validation error", name, err)
			}
		}
	}
}

func loc(res map[string]any) map[string]any {
	return res["locations"].([]any)[0].(map[string]any)["physicalLocation"].(map[string]any)
}

// The SARIF shape read back.
type sLog struct {
	Schema  string `json:"$schema"`
	Version string `json:"version"`
	Runs    []struct {
		Tool struct {
			Driver struct {
				Name           string `json:"name"`
				Version        string `json:"version"`
				InformationURI string `json:"informationUri"`
				Rules          []struct {
					ID               string `json:"id"`
					ShortDescription struct{ Text string }
					Help             struct{ Text string }
				} `json:"rules"`
			} `json:"driver"`
		} `json:"tool"`
		Results []struct {
			RuleID    string `json:"ruleId"`
			RuleIndex int    `json:"ruleIndex"`
			Level     string `json:"level"`
			Message   struct{ Text string }
			Locations []struct {
				PhysicalLocation *struct {
					ArtifactLocation *struct {
						URI string `json:"uri"`
					} `json:"artifactLocation"`
					Region *struct {
						StartLine int `json:"startLine"`
					} `json:"region"`
				} `json:"physicalLocation"`
				Message *struct {
					Text string `json:"text"`
				} `json:"message"`
			} `json:"locations"`
			PartialFingerprints map[string]string `json:"partialFingerprints"`
			Properties          map[string]any    `json:"properties"`
		} `json:"results"`
	} `json:"runs"`
}

func parseSARIF(t *testing.T, data []byte) sLog {
	t.Helper()
	var l sLog
	if err := json.Unmarshal(data, &l); err != nil {
		t.Fatal(err)
	}
	return l
}

func TestSARIF(t *testing.T) {
	r := fixtureReport(t)
	l := parseSARIF(t, render(t, r, "sarif"))
	if l.Schema != "https://json.schemastore.org/sarif-2.1.0.json" || l.Version != "2.1.0" || len(l.Runs) != 1 {
		t.Fatalf("$schema %q version %q, %d runs", l.Schema, l.Version, len(l.Runs))
	}
	run := l.Runs[0]
	d := run.Tool.Driver
	if d.Name != "flowaudit" || d.Version != "v0.3.0-test" || d.InformationURI == "" {
		t.Errorf("driver %+v", d)
	}
	if len(d.Rules) != len(Kinds) {
		t.Fatalf("%d rule descriptors, want one per kind (%d)", len(d.Rules), len(Kinds))
	}
	for i, k := range Kinds {
		if d.Rules[i].ID != string(k) || d.Rules[i].ShortDescription.Text == "" || d.Rules[i].Help.Text == "" {
			t.Errorf("descriptor %d: %+v", i, d.Rules[i])
		}
	}
	if len(run.Results) != len(r.Findings) {
		t.Fatalf("%d results, %d findings", len(run.Results), len(r.Findings))
	}
	files := catalog.BuiltinFiles()
	site, err := os.ReadFile("testdata/render/site.yaml")
	if err != nil {
		t.Fatal(err)
	}
	levels := map[Severity]string{High: "error", Medium: "warning", Low: "note", Info: "note"}
	for i, f := range r.Findings {
		res := run.Results[i]
		if res.RuleID != string(f.Kind) || d.Rules[res.RuleIndex].ID != res.RuleID {
			t.Errorf("%s: ruleId %q index %d", f.ID, res.RuleID, res.RuleIndex)
		}
		if res.Level != levels[f.Severity] || res.Message.Text != f.Summary {
			t.Errorf("%s: level %q message %q", f.ID, res.Level, res.Message.Text)
		}
		if res.PartialFingerprints[sarifFingerprint] != f.ID {
			t.Errorf("%s: fingerprints %v", f.ID, res.PartialFingerprints)
		}
		for _, k := range []string{"direction", "packets", "peers", "severity"} {
			if _, ok := res.Properties[k]; !ok {
				t.Errorf("%s: no property %s", f.ID, k)
			}
		}
		if f.Proto != "" && (res.Properties["proto"] != f.Proto || res.Properties["port"] != f.Port) {
			t.Errorf("%s: proto/port properties %v %v", f.ID, res.Properties["proto"], res.Properties["port"])
		}
		if len(res.Locations) == 0 || res.Locations[0].PhysicalLocation == nil ||
			res.Locations[0].PhysicalLocation.ArtifactLocation == nil || res.Locations[0].PhysicalLocation.Region == nil {
			t.Errorf("%s: no physicalLocation with artifactLocation and region", f.ID)
			continue
		}
		pl := res.Locations[0].PhysicalLocation
		uri, line := pl.ArtifactLocation.URI, pl.Region.StartLine
		if line < 1 || strings.Contains(uri, `\`) || strings.HasPrefix(uri, "/") || strings.Contains(uri, "..") {
			t.Errorf("%s: location %s:%d", f.ID, uri, line)
		}
		// The built-in catalog is not in the user's repository: results
		// point at the site file, at the binding of the rule's peer.
		if strings.HasPrefix(uri, "catalog/") {
			t.Errorf("%s: points at the built-in catalog %s", f.ID, uri)
		}
		if uri != "testdata/render/site.yaml" {
			t.Errorf("%s: location %s, want the site file", f.ID, uri)
			continue
		}
		siteLines := strings.Split(string(site), "\n")
		if f.Rule == nil {
			if line != 1 {
				t.Errorf("%s: a finding without a rule at line %d", f.ID, line)
			}
			continue
		}
		var key string
		if strings.HasPrefix(f.Rule.Peer, "zone ") {
			key = "  " + strings.TrimPrefix(f.Rule.Peer, "zone ") + ":"
		} else if strings.HasPrefix(f.Rule.Peer, "role agent") {
			key = "  AGENT_NETWORK:" // the role's fallback zone
		}
		msg := res.Locations[0].Message
		switch {
		case key != "" && !strings.Contains(string(site), "\n"+key):
			// Unbound (ANALYST_NETWORK): line 1, and the message says so.
			if line != 1 || msg == nil || !strings.Contains(msg.Text, "does not bind "+f.Rule.Peer) {
				t.Errorf("%s: unbound %s at %s:%d, message %v", f.ID, f.Rule.Peer, uri, line, msg)
			}
		case key == "" || line > len(siteLines) || !strings.HasPrefix(siteLines[line-1], key):
			t.Errorf("%s: %s:%d is not the binding of %s", f.ID, uri, line, f.Rule.Peer)
		}
		if msg == nil || !strings.Contains(msg.Text, f.Rule.ID) || !strings.Contains(msg.Text, f.Rule.Source.String()) {
			t.Errorf("%s: location message %v lacks the rule and its built-in source", f.ID, msg)
		}
		// The rule's place in the built-in catalog is kept as a property,
		// and really is the rule.
		src, _ := res.Properties["catalogSource"].(string)
		file, lineStr, _ := strings.Cut(src, ":")
		n, _ := strconv.Atoi(lineStr)
		content, ok := files[file]
		if src != f.Rule.Source.String() || !ok || n < 1 {
			t.Errorf("%s: catalogSource %q", f.ID, src)
			continue
		}
		lines := strings.Split(string(content), "\n")
		local := f.Rule.ID[strings.LastIndex(f.Rule.ID, ".")+1:]
		if n > len(lines) || !strings.Contains(lines[n-1], "- id: "+local) {
			t.Errorf("%s: %s is not rule %s", f.ID, src, local)
		}
	}
}

func TestSARIFURI(t *testing.T) {
	root := t.TempDir()
	abs := filepath.Join(root, "site cats", "my.yaml")
	outside := filepath.Join(t.TempDir(), "other.yaml")
	cwd, _ := os.Getwd()
	for _, tc := range []struct{ file, root, want string }{
		{"catalog/data/utmstack-v11.yaml", "", "catalog/data/utmstack-v11.yaml"},
		{"catalog/data/utmstack-v11.yaml", root, "catalog/data/utmstack-v11.yaml"},
		{"catalogs/mine.yaml", "", "catalogs/mine.yaml"},
		{"./catalogs//mine.yaml", "", "catalogs/mine.yaml"},
		{abs, root, "site%20cats/my.yaml"},
		{abs, root + "/", "site%20cats/my.yaml"},
		{outside, root, "file://" + filepath.ToSlash(outside)},
		{abs, "", "file://" + strings.ReplaceAll(filepath.ToSlash(abs), " ", "%20")},
		{"testdata/render/site.yaml", cwd, "testdata/render/site.yaml"},
		{"testdata/render/site.yaml", filepath.Dir(cwd), "audit/testdata/render/site.yaml"},
	} {
		if got := sarifURI(tc.file, tc.root); got != tc.want {
			t.Errorf("sarifURI(%q, %q) = %q, want %q", tc.file, tc.root, got, tc.want)
		}
	}
}

// TestSARIFLocationFallbacks: every result has a location in the user's
// repository, or the documented placeholder, never the built-in catalog;
// a matrix from a user catalog outside the root keeps a (file://) URI.
func TestSARIFLocationFallbacks(t *testing.T) {
	builtinSrc := catalog.SourcePos{File: "catalog/data/utmstack-v11.yaml", Line: 93}
	findings := []Finding{
		{ID: "undoc", Kind: UndocumentedFlow, Severity: High, Summary: "x"},
		{ID: "zone", Kind: PeerOutOfZone, Severity: High, Summary: "y",
			Rule: &RuleRef{ID: "utmstack11.manager.ssh", Peer: "zone ADMIN_IP", Source: builtinSrc}},
		{ID: "unbound", Kind: MissingRequired, Severity: Medium, Summary: "z",
			Rule: &RuleRef{ID: "utmstack11.manager.cloud", Peer: "zone CENTRAL_SERVER_IP", Source: builtinSrc}},
		{ID: "user", Kind: MissingRequired, Severity: Medium, Summary: "w",
			Rule: &RuleRef{ID: "demo.server.r", Peer: "zone X", Source: catalog.SourcePos{File: "cats/demo.yaml", Line: 0}}},
	}
	builtinRules := []RuleStatus{{Rule: RuleRef{Source: builtinSrc}}}
	for _, tc := range []struct {
		name     string
		site     string
		catalogs []string
		rules    []RuleStatus
		want     string
	}{
		{"site given", "sites/lab.yaml", nil, builtinRules,
			"sites/lab.yaml:1 sites/lab.yaml:7 sites/lab.yaml:1 cats/demo.yaml:1"},
		{"catalog given, no site", "", []string{"cats/mine.yaml"}, builtinRules,
			"cats/mine.yaml:1 cats/mine.yaml:1 cats/mine.yaml:1 cats/demo.yaml:1"},
		{"site and catalog given", "sites/lab.yaml", []string{"cats/mine.yaml"}, builtinRules,
			"cats/mine.yaml:1 sites/lab.yaml:7 sites/lab.yaml:1 cats/demo.yaml:1"},
		{"nothing of the user's", "", nil, builtinRules,
			"flowaudit-matrix/utmstack@11/manager:1 flowaudit-matrix/utmstack@11/manager:1 flowaudit-matrix/utmstack@11/manager:1 cats/demo.yaml:1"},
		{"a matrix of a user catalog", "", nil, []RuleStatus{{Rule: RuleRef{Source: catalog.SourcePos{File: "cats/demo.yaml", Line: 4}}}},
			"cats/demo.yaml:1 flowaudit-matrix/utmstack@11/manager:1 flowaudit-matrix/utmstack@11/manager:1 cats/demo.yaml:1"},
		{"a matrix without rules", "", nil, nil,
			"flowaudit-matrix/utmstack@11/manager:1 flowaudit-matrix/utmstack@11/manager:1 flowaudit-matrix/utmstack@11/manager:1 cats/demo.yaml:1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &Report{Version: ReportVersion, Counts: map[string]int{"high": 2, "medium": 2}, Findings: findings, Rules: tc.rules, Site: tc.site}
			r.Matrix = MatrixInfo{Product: "utmstack", ProductName: "UTMStack", Version: "11", Role: "manager"}
			if tc.site != "" {
				r.SiteLines = map[string]int{"zone ADMIN_IP": 7}
			}
			var buf bytes.Buffer
			if err := WriteSARIF(&buf, r, RenderOptions{CatalogFiles: tc.catalogs}); err != nil {
				t.Fatal(err)
			}
			if err := validateJSON(sarifValidator(t), buf.Bytes()); err != nil {
				t.Fatal(err)
			}
			l := parseSARIF(t, buf.Bytes())
			got := []string{}
			for _, res := range l.Runs[0].Results {
				pl := res.Locations[0].PhysicalLocation
				got = append(got, fmt.Sprintf("%s:%d", pl.ArtifactLocation.URI, pl.Region.StartLine))
			}
			if strings.Join(got, " ") != tc.want {
				t.Errorf("locations\n %s\nwant\n %s", strings.Join(got, " "), tc.want)
			}
			if strings.Contains(buf.String(), `"uri": "catalog/`) {
				t.Error("a result points at the built-in catalog")
			}
		})
	}
}

// --- Snapshot version 2: what a snapshot could not show ----------------------

// partialSnapshot is the fixture after a spoofed SYN flood on the web
// port filled the flow map: the agents' tcp/9001 traffic lost its peers
// (overflow), the recorder folded peers into prefixes (one straddles
// ADMIN_IP), some packets were not counted at all, and the recording was
// stopped by SIGTERM half-way through its planned hour.
func partialSnapshot() *snapshot.Snapshot {
	s := fixtureSnapshot()
	in, tcp := snapshot.Inbound, snapshot.TCP
	var flows []snapshot.Flow
	for _, f := range s.Flows {
		if f.Port != 9001 {
			flows = append(flows, f)
		}
	}
	sketch := func(base string, n int) *snapshot.PeerSketch {
		var sk snapshot.PeerSketch
		b := netip.MustParseAddr(base).As4()
		for i := 0; i < n; i++ {
			sk.Add(netip.AddrFrom4([4]byte{b[0], b[1], b[2] + byte(i>>8), b[3] + byte(i)}))
		}
		return &sk
	}
	fold := func(port uint16, prefix string, peers *snapshot.PeerSketch, pin, pout uint64, ev snapshot.Evidence, startMin, endMin int) snapshot.Flow {
		f := fixtureFlow(in, tcp, port, "192.0.2.1", pin, pout, ev, startMin, endMin)
		f.Peer = netip.Addr{}
		if prefix != "" {
			f.PeerPrefix = netip.MustParsePrefix(prefix)
		}
		f.PeerSketch, f.Peers = peers, peers.Estimate()
		return f
	}
	syn := func(n uint64) snapshot.Evidence { return snapshot.Evidence{SynIn: n, SynAckOut: n} }
	flows = append(flows,
		// SSH from a /24 around ADMIN_IP: cannot be zone-checked.
		fold(22, "192.0.2.0/24", sketch("192.0.2.20", 14), 60, 50, syn(14), 2, 25),
		// Agents folded inside AGENT_NETWORK.
		fold(9000, "10.10.7.0/24", sketch("10.10.7.1", 40), 900, 850, syn(40), 0, 30),
		// The flood on tcp/443: folded /24s and "other peers", within a minute.
		fold(443, "203.0.113.0/24", sketch("203.0.113.0", 250), 5000, 5000, syn(5000), 14, 15),
		fold(443, "198.18.0.0/24", sketch("198.18.0.0", 250), 4000, 4000, syn(4000), 14, 15),
		fold(443, "198.18.1.0/24", sketch("198.18.1.0", 250), 4000, 4000, syn(4000), 14, 15),
		fold(443, "0.0.0.0/0", sketch("100.64.0.0", 2000), 8000, 8000, syn(8000), 14, 15),
	)
	s.Flows = flows
	s.Overflow = []snapshot.Flow{
		// The agents' data, without peers.
		fold(9001, "", sketch("10.10.1.1", 2), 150000, 75000, syn(2), 0, 30),
		// Flood SYNs that lost their peer as well.
		fold(443, "", sketch("100.65.0.0", 3000), 3000, 3000, syn(3000), 14, 15),
	}
	var peerless uint64
	for _, f := range s.Overflow {
		peerless += f.Packets()
	}
	s.Stats.FlowEntries, s.Stats.FlowCapacity = 4096, 4096
	s.Stats.OverflowCapacity, s.Stats.OverflowInsertFailed = 1024, 120
	s.Stats.FlowInsertFailed = peerless + 120
	s.Stats.Moves, s.Stats.FlowBudget, s.Stats.FoldedFlows = 30, 8192, 2764
	s.Interrupted = &snapshot.Interruption{Signal: "SIGTERM", At: fixEnd, PlannedEnd: fixStart.Add(time.Hour)}
	s.Sort()
	return s
}

func TestGoldenPartialReports(t *testing.T) {
	r := fixtureReportOf(t, partialSnapshot())
	for _, tc := range []struct{ format, file string }{
		{"table", "report-partial.txt"},
		{"json", "report-partial.json"},
		{"html", "report-partial.html"},
		{"junit", "report-partial.junit.xml"},
		{"sarif", "report-partial.sarif"},
	} {
		t.Run(tc.format, func(t *testing.T) {
			got := render(t, r, tc.format)
			if again := render(t, fixtureReportOf(t, partialSnapshot()), tc.format); !bytes.Equal(got, again) {
				t.Fatalf("%s output is not deterministic", tc.format)
			}
			checkGolden(t, tc.file, got)
		})
	}
}

// TestRenderCoverage: every format shows the packets that lost their peer
// and on which services, the packets not counted, the folding, the
// interruption or checkpoint, and the flood.
func TestRenderCoverage(t *testing.T) {
	r := fixtureReportOf(t, partialSnapshot())
	cov := r.Coverage
	if cov.Complete || cov.PeerlessPackets != 231000 || cov.LostPackets != 120 || cov.FoldedFlows != 2764 ||
		len(cov.PeerlessServices) != 2 || cov.PeerlessServices[0].String() != "in tcp/9001" || cov.Stopped == "" {
		t.Fatalf("coverage %+v", cov)
	}
	ids := map[string]Severity{}
	for _, f := range r.Findings {
		ids[f.ID] = f.Severity
	}
	for id, sev := range map[string]Severity{
		"audit-incomplete/not-counted":     High,
		"audit-incomplete/peers-lost":      Medium,
		"audit-incomplete/zones-unchecked": Medium,
		"audit-incomplete/interrupted":     Medium,
		"audit-incomplete/folded":          Low,
		"flood-suspected/tcp/443":          Medium,
	} {
		if got, ok := ids[id]; !ok || got != sev {
			t.Errorf("%s: %v (present %v), want %s", id, got, ok, sev)
		}
	}
	if _, ok := ids["missing-required/utmstack11.manager.agent-9001"]; ok {
		t.Error("agents seen only in overflow reported missing")
	}
	if _, ok := ids["peer-out-of-zone/utmstack11.manager.ssh/tcp/22"]; !ok {
		t.Error("the exact out-of-zone SSH login is gone")
	}
	facts := []string{"231000", "tcp/9001", "120", "2764", "SIGTERM", "flood-suspected", "198.18.0.0/24", "192.0.2.0/24 across zone ADMIN_IP"}
	for _, f := range Formats {
		out := string(render(t, r, f))
		for _, want := range facts {
			if !strings.Contains(out, want) {
				t.Errorf("%s output lacks %q", f, want)
			}
		}
	}
	table := string(render(t, r, "table"))
	for _, want := range []string{
		"map: 4096/4096 entries, 231000 packets counted without peer, 120 not counted, 0 flows evicted, 2764 folded (budget 8192)  INCOMPLETE\n",
		"\npeers lost: 231000 packets counted without their peer (the kernel flow map was full), on in tcp/9001 (225000 packets, ~2 peers, not checked against role agent (zone AGENT_NETWORK)); in tcp/443 (6000 packets, ~",
		"\nstopped early: the recording was interrupted by SIGTERM at 2026-03-02 09:30:00Z, after 30m0s of a planned 1h0m0s\n",
		"seen-peers-unknown",
	} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q", want)
		}
	}
	html := string(render(t, r, "html"))
	for _, want := range []string{`<div class="incomplete" role="alert">`, `<div class="partial" id="coverage" role="note">`,
		`<span class="status st-seen-peers-unknown">seen-peers-unknown</span>`, "225000 pkts, peers unknown"} {
		if !strings.Contains(html, want) {
			t.Errorf("HTML lacks %q", want)
		}
	}
	// SARIF stays valid and every result keeps its physical location.
	out := render(t, r, "sarif")
	if err := validateJSON(sarifValidator(t), out); err != nil {
		t.Fatal(err)
	}
	for i, res := range parseSARIF(t, out).Runs[0].Results {
		if len(res.Locations) == 0 || res.Locations[0].PhysicalLocation == nil || res.Locations[0].PhysicalLocation.Region.StartLine < 1 {
			t.Errorf("result %d (%s) has no physical location", i, res.RuleID)
		}
	}
	// JUnit: the coverage properties, and the gaps fail as findings.
	js := parseJUnit(t, render(t, r, "junit"))
	props := map[string]string{}
	for _, p := range js.Suites[0].Props {
		props[p.Name] = p.Value
	}
	if props["snapshot.incomplete"] != "true" || props["snapshot.peerless-packets"] != "231000" || props["snapshot.lost-packets"] != "120" ||
		!strings.Contains(props["snapshot.interrupted"], "SIGTERM") || !strings.Contains(props["snapshot.coverage"], "peers lost") {
		t.Errorf("JUnit properties %v", props)
	}

	// A checkpoint shows in every format too.
	s := fixtureSnapshot()
	s.Checkpoint = true
	r = fixtureReportOf(t, s)
	for _, f := range Formats {
		if out := string(render(t, r, f)); !strings.Contains(out, "checkpoint") {
			t.Errorf("%s output does not say the snapshot is a checkpoint", f)
		}
	}
}
