package catalog

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/flowaudit/flowaudit/vocab"
)

// The seed documents the built-in catalog was written from, and the
// product each belongs to.
var seedProducts = map[string]string{
	"000_406180ae05aed6fb.txt": "usm",
	"001_7dabf2b0e5e35c87.txt": "usm",
	"002_61ddfc7fc57aa6c8.txt": "utmstack",
	"003_fa9f2efee7470935.txt": "vsos",
	"004_c793c473800cb152.txt": "utmstack",
}

// seedPorts is what the extractor must find in each document: every
// distinct port (P) or IP protocol number (ipproto:N). It pins the
// extractor, so a regression in it cannot make the coverage test vacuous.
var seedPorts = map[string]string{
	"000_406180ae05aed6fb.txt": "22 139 161 162 443 445 1514 33800",
	"001_7dabf2b0e5e35c87.txt": "22 80 135 139 161 162 443 445 1024 1514 9391 33800",
	"002_61ddfc7fc57aa6c8.txt": "443 514 1194 1470 1514 1516 2055 2056 5000 5044 8000 8089 8888 9000 9390 55000",
	"003_fa9f2efee7470935.txt": "22 137 138 139 161 162 389 443 445 636 1344 2048 2121 5222 5224 5226 8000 8001 8080 8443 ipproto:47",
	"004_c793c473800cb152.txt": "22 80 443 514 2055 2377 4739 4789 6514 7946 9000 9001 9090 9200 9300 50051 50052",
}

// Numbers in the seeds that are not ports, with the reason. Each pattern's
// first group is the number excluded. Dotted numbers (releases such as
// 5.6.5, 9.2) and IPv4 addresses/prefixes are excluded generically.
var seedExclusions = []struct {
	doc    string // "" for every document
	re     *regexp.Regexp
	reason string
}{
	{"", regexp.MustCompile(`\.(?:com|php)(\d)(?:\b|[A-Z])`), "footnote number glued to a URL (otx.alienvault.com1, www.google.com2, ping.php3)"},
	{"002_61ddfc7fc57aa6c8.txt", regexp.MustCompile(`nav_order: (\d+)`), "page front matter (navigation order)"},
	{"003_fa9f2efee7470935.txt", regexp.MustCompile(`(?m)^#+ (\d)\.`), "section number (1. Scanning Server Role …)"},
	{"004_c793c473800cb152.txt", regexp.MustCompile(`\bv(\d+)\b`), "version with a v (UTMStack v11, NetFlow v5/v9)"},
	{"004_c793c473800cb152.txt", regexp.MustCompile(`Office (365)`), "product name (Office 365)"},
	{"004_c793c473800cb152.txt", regexp.MustCompile(`ADMIN_IP/(\d+)`), "CIDR prefix length of the ADMIN_IP placeholder"},
	{"004_c793c473800cb152.txt", regexp.MustCompile(`--priority (\d+)`), "Azure NSG rule priority"},
}

var (
	reIPv4    = regexp.MustCompile(`\b\d{1,3}(?:\.\d{1,3}){3}(?:/\d{1,2})?\b`)
	reDotted  = regexp.MustCompile(`\bv?\d+(?:\.\d+)+\+?`)
	reInteger = regexp.MustCompile(`\d+`)
	// Protocol hints around a number; group "n" (and "m" for the end of a
	// range) is the port, group "p" the protocol.
	protoHints = []*regexp.Regexp{
		regexp.MustCompile(`(?i)\b(?P<n>\d+)\s*-\s*(?P<m>\d+)/(?P<p>TCP\+UDP|TCP|UDP)\b`),
		regexp.MustCompile(`(?i)\b(?P<n>\d+)/(?P<p>TCP\+UDP|TCP|UDP)\b`),
		regexp.MustCompile(`(?i)\b(?P<p>TCP|UDP)/(?P<n>\d+)\b`),
		regexp.MustCompile(`(?i)\b(?P<p>TCP|UDP) port (?P<n>\d+)\b`),
		regexp.MustCompile(`(?i)\bport (?P<n>\d+) proto (?P<p>tcp|udp)\b`),
		regexp.MustCompile(`(?m)^(?:<b>)?(?P<n>\d+)(?:</b>)?[ \t]+(?P<p>UDP)\b`), // VSOS "161 UDP", "162\tUDP …"
		regexp.MustCompile(`"IpProtocol": "(?P<p>tcp|udp)",\s*"FromPort": (?P<n>\d+),\s*"ToPort": (?P<m>\d+)`),
	}
	reIPProto = regexp.MustCompile(`IP protocol (\d+)`)
)

type seedNumber struct {
	n      int
	protos []vocab.Proto // nil: the document gives none (any protocol with ports)
	ipp    bool          // an IP protocol number, not a port
	ctx    string
}

// extractSeedNumbers returns every number in a seed document that is a
// port or protocol number, and the excluded numbers with their reason.
func extractSeedNumbers(doc, text string) (ports []seedNumber, excluded map[string]int) {
	excluded = map[string]int{}
	b := []byte(text)
	blank := func(lo, hi int) {
		for i := lo; i < hi; i++ {
			if b[i] >= '0' && b[i] <= '9' {
				b[i] = ' '
			}
		}
	}
	for _, m := range reIPv4.FindAllIndex(b, -1) {
		excluded["IPv4 address or prefix (example addresses)"]++
		blank(m[0], m[1])
	}
	for _, m := range reDotted.FindAllIndex(b, -1) {
		excluded["dotted number: a release version (5.4.3, 5.6.5, 9.2)"]++
		blank(m[0], m[1])
	}
	for _, ex := range seedExclusions {
		if ex.doc != "" && ex.doc != doc {
			continue
		}
		for _, m := range ex.re.FindAllSubmatchIndex(b, -1) {
			for g := 1; g < len(m)/2; g++ {
				if m[2*g] >= 0 {
					excluded[ex.reason]++
					blank(m[2*g], m[2*g+1])
				}
			}
		}
	}
	ctx := func(lo, hi int) string {
		a, z := max(0, lo-30), min(len(text), hi+30)
		return strings.Join(strings.Fields(text[a:z]), " ")
	}
	// Protocol hints by position of the number.
	hint := map[int][]vocab.Proto{}
	for _, re := range protoHints {
		for _, m := range re.FindAllSubmatchIndex(b, -1) {
			var protos []vocab.Proto
			for _, p := range strings.Split(strings.ToLower(string(b[m[2*re.SubexpIndex("p")]:m[2*re.SubexpIndex("p")+1]])), "+") {
				pp, _ := vocab.ParseProto(p)
				protos = append(protos, pp)
			}
			for _, g := range []string{"n", "m"} {
				if i := re.SubexpIndex(g); i > 0 && m[2*i] >= 0 {
					if _, set := hint[m[2*i]]; !set {
						hint[m[2*i]] = protos
					}
				}
			}
		}
	}
	ipproto := map[int]bool{}
	for _, m := range reIPProto.FindAllSubmatchIndex(b, -1) {
		ipproto[m[2]] = true
	}
	var def []vocab.Proto
	if doc == "003_fa9f2efee7470935.txt" {
		// "All ports mentioned in this document are TCP unless otherwise listed."
		def = []vocab.Proto{vocab.TCP}
	}
	for _, m := range reInteger.FindAllIndex(b, -1) {
		n, _ := strconv.Atoi(string(b[m[0]:m[1]]))
		sn := seedNumber{n: n, ctx: ctx(m[0], m[1])}
		switch {
		case ipproto[m[0]]:
			sn.ipp = true
		case hint[m[0]] != nil:
			sn.protos = hint[m[0]]
		default:
			sn.protos = def
		}
		ports = append(ports, sn)
	}
	return ports, excluded
}

func seedDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join("..", "..", "shared", "seeds") // repoRoot/../shared/seeds
	if _, err := os.Stat(dir); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("seed documents missing (%v); CI needs ../shared/seeds beside the checkout", err)
		}
		t.Skipf("seed documents not found at %s: %v", dir, err)
	}
	return dir
}

// TestSeedPortsCovered checks that every port number in every seed
// document is covered by a rule of that document's product that cites the
// document (as its citation or a see-also), with the protocol the document
// gives where it gives one.
func TestSeedPortsCovered(t *testing.T) {
	dir := seedDir(t)
	c := builtinT(t)
	files, err := filepath.Glob(filepath.Join(dir, "*.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no seed documents in %s", dir)
	}
	for _, f := range files {
		doc := filepath.Base(f)
		t.Run(doc, func(t *testing.T) {
			prodID, ok := seedProducts[doc]
			if !ok {
				t.Fatalf("seed %s belongs to no product in the catalog: catalogue it and add it to seedProducts", doc)
			}
			p, ok := c.Product(prodID)
			if !ok {
				t.Fatalf("no product %q", prodID)
			}
			var rules []Rule
			for _, fam := range p.Families() {
				for _, r := range fam.Rules() {
					if citesDoc(r, doc) && inEditionOf(fam, r, doc) {
						rules = append(rules, r)
					}
				}
			}
			text, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			nums, excluded := extractSeedNumbers(doc, string(text))
			for reason, n := range excluded {
				t.Logf("excluded %d number(s): %s", n, reason)
			}
			var found []string
			for _, sn := range nums {
				key := strconv.Itoa(sn.n)
				if sn.ipp {
					key = "ipproto:" + key
				}
				if !slices.Contains(found, key) {
					found = append(found, key)
				}
				if !covered(rules, sn) {
					t.Errorf("%s: %s (protocols %v) is in no rule citing the document; context: %q", doc, key, sn.protos, sn.ctx)
				}
			}
			sort.Slice(found, func(i, j int) bool { return keyNum(found[i]) < keyNum(found[j]) })
			want := strings.Fields(seedPorts[doc])
			sort.Slice(want, func(i, j int) bool { return keyNum(want[i]) < keyNum(want[j]) })
			if !slices.Equal(found, want) {
				t.Errorf("extractor found %v, want %v", found, want)
			}
		})
	}
}

func keyNum(k string) int {
	n, _ := strconv.Atoi(strings.TrimPrefix(k, "ipproto:"))
	if strings.HasPrefix(k, "ipproto:") {
		n += 1 << 20
	}
	return n
}

// inEditionOf reports whether r is in the matrix following the edition
// that is document doc (always, for a rule of every edition): a port the
// LevelBlue edition gives must be in the levelblue matrix, not only in the
// alienvault one.
func inEditionOf(f *Family, r Rule, doc string) bool {
	if len(r.Editions) == 0 {
		return true
	}
	for _, name := range r.Editions {
		if e, ok := f.Edition(name); ok && e.Document == doc {
			return true
		}
	}
	return false
}

func citesDoc(r Rule, doc string) bool {
	if r.Citation.Doc == doc {
		return true
	}
	for _, c := range r.SeeAlso {
		if c.Doc == doc {
			return true
		}
	}
	return false
}

func covered(rules []Rule, sn seedNumber) bool {
	for _, r := range rules {
		if sn.ipp {
			if slices.Contains(r.Protos, vocab.Proto(sn.n)) {
				return true
			}
			continue
		}
		if sn.n > 65535 {
			return false
		}
		protos := sn.protos
		if protos == nil {
			protos = r.Protos
		}
		all := true
		for _, p := range protos {
			if !p.HasPorts() || !r.Matches(p, uint16(sn.n)) {
				all = false
			}
		}
		if all {
			return true
		}
	}
	// tcp+udp may be split over two rules.
	if len(sn.protos) > 1 {
		for _, p := range sn.protos {
			if !covered(rules, seedNumber{n: sn.n, protos: []vocab.Proto{p}}) {
				return false
			}
		}
		return true
	}
	return false
}

// TestSeedCoverageCanFail makes sure the coverage check is not vacuous:
// dropping the rules for a port makes it fail.
func TestSeedCoverageCanFail(t *testing.T) {
	dir := seedDir(t)
	c := builtinT(t)
	p, _ := c.Product("utmstack")
	doc := "004_c793c473800cb152.txt"
	text, err := os.ReadFile(filepath.Join(dir, doc))
	if err != nil {
		t.Fatal(err)
	}
	nums, _ := extractSeedNumbers(doc, string(text))
	var rules []Rule
	for _, f := range p.Families() {
		for _, r := range f.Rules() {
			if citesDoc(r, doc) && !r.Matches(vocab.TCP, 50052) {
				rules = append(rules, r)
			}
		}
	}
	for _, sn := range nums {
		if sn.n == 50052 && covered(rules, sn) {
			t.Fatal("50052 still covered without its rules")
		}
	}
	// 514/UDP must not be covered by a TCP-only rule.
	tcpOnly := []Rule{{Protos: []vocab.Proto{vocab.TCP}, Ports: []PortRange{{514, 514}}}}
	if covered(tcpOnly, seedNumber{n: 514, protos: []vocab.Proto{vocab.UDP}}) {
		t.Error("514/udp covered by a tcp rule")
	}
	if !covered(tcpOnly, seedNumber{n: 514}) {
		t.Error("514 without protocol not covered by 514/tcp")
	}
}
