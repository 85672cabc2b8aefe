package passivedns

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

func build(t testing.TB, rcode dnsmessage.RCode, fn func(b *dnsmessage.Builder) error) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 1, Response: true, RCode: rcode})
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		t.Fatal(err)
	}
	if err := b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName("data.alienvault.com."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}); err != nil {
		t.Fatal(err)
	}
	if err := b.StartAnswers(); err != nil {
		t.Fatal(err)
	}
	if err := fn(&b); err != nil {
		t.Fatal(err)
	}
	msg, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

func hdr(name string, ttl uint32) dnsmessage.ResourceHeader {
	return dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(name), Class: dnsmessage.ClassINET, TTL: ttl}
}

// chainMsg: data.alienvault.com → feed.cdn.example → edge.cdn.example,
// which holds two IPv4 addresses and one IPv6 address; plus an MX
// record that is skipped.
func chainMsg(t testing.TB) []byte {
	return build(t, dnsmessage.RCodeSuccess, func(b *dnsmessage.Builder) error {
		if err := b.CNAMEResource(hdr("Data.AlienVault.com.", 300), dnsmessage.CNAMEResource{CNAME: dnsmessage.MustNewName("feed.cdn.example.")}); err != nil {
			return err
		}
		if err := b.CNAMEResource(hdr("feed.cdn.example.", 120), dnsmessage.CNAMEResource{CNAME: dnsmessage.MustNewName("edge.cdn.example.")}); err != nil {
			return err
		}
		if err := b.MXResource(hdr("edge.cdn.example.", 60), dnsmessage.MXResource{Pref: 1, MX: dnsmessage.MustNewName("mx.cdn.example.")}); err != nil {
			return err
		}
		for _, a := range []string{"203.0.113.7", "203.0.113.8"} {
			if err := b.AResource(hdr("edge.cdn.example.", 60), dnsmessage.AResource{A: netip.MustParseAddr(a).As4()}); err != nil {
				return err
			}
		}
		return b.AAAAResource(hdr("edge.cdn.example.", 30), dnsmessage.AAAAResource{AAAA: netip.MustParseAddr("2001:db8:5::7").As16()})
	})
}

func recStrings(rs []Record) map[string]bool {
	out := map[string]bool{}
	for _, r := range rs {
		out[r.Addr.String()+" "+r.Name+" "+strings.Join(r.Chain, ">")+" "+itoa(r.TTL)] = true
	}
	return out
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }

func TestParseCNAMEChain(t *testing.T) {
	msg := chainMsg(t)
	rs, err := Parse(msg, false)
	if err != nil {
		t.Fatal(err)
	}
	got := recStrings(rs)
	want := []string{
		"203.0.113.7 edge.cdn.example  60", "203.0.113.7 feed.cdn.example edge.cdn.example 60",
		"203.0.113.7 data.alienvault.com feed.cdn.example>edge.cdn.example 60",
		"203.0.113.8 data.alienvault.com feed.cdn.example>edge.cdn.example 60",
		"2001:db8:5::7 data.alienvault.com feed.cdn.example>edge.cdn.example 30",
	}
	for _, w := range want {
		if !got[w] {
			t.Errorf("missing %q in %v", w, got)
		}
	}
	if len(rs) != 9 {
		t.Errorf("%d records, want 9 (3 addresses × 3 names)", len(rs))
	}
	// The same message over TCP, with its length prefix.
	tcp := binary.BigEndian.AppendUint16(nil, uint16(len(msg)))
	rs2, err := Parse(append(tcp, msg...), true)
	if err != nil || len(rs2) != 9 {
		t.Errorf("tcp: %d records, %v", len(rs2), err)
	}
	if _, err := Parse(append(tcp, msg[:len(msg)-1]...), true); !errors.Is(err, ErrIncomplete) {
		t.Errorf("tcp cut: %v, want ErrIncomplete", err)
	}
}

func TestParseRefusals(t *testing.T) {
	msg := chainMsg(t)
	q := append([]byte(nil), msg...)
	q[2] &^= 0x80 // QR bit off: a query
	if _, err := Parse(q, false); !errors.Is(err, ErrNotResponse) {
		t.Errorf("query: %v", err)
	}
	nx := build(t, dnsmessage.RCodeNameError, func(*dnsmessage.Builder) error { return nil })
	if rs, err := Parse(nx, false); err != nil || len(rs) != 0 {
		t.Errorf("NXDOMAIN: %v %v", rs, err)
	}
	// Cut inside the last record: the records before it are kept.
	rs, err := Parse(msg[:len(msg)-5], false)
	if err == nil || len(rs) == 0 {
		t.Errorf("cut: %d records, err %v; want some records and an error", len(rs), err)
	}
	for _, r := range rs {
		if r.Addr.Is6() {
			t.Errorf("cut record parsed: %v", r)
		}
	}
}

// loopMsg: an answer whose owner name is a compression pointer to itself.
func loopMsg() []byte {
	m := []byte{0, 1, 0x81, 0x80, 0, 0, 0, 1, 0, 0, 0, 0}
	// answer: name = pointer to offset 12 (itself)
	m = append(m, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 203, 0, 113, 9)
	return m
}

// hugeCountMsg claims 65535 questions and answers but carries one.
func hugeCountMsg(t testing.TB) []byte {
	m := append([]byte(nil), chainMsg(t)...)
	binary.BigEndian.PutUint16(m[4:], 0xffff)
	binary.BigEndian.PutUint16(m[6:], 0xffff)
	return m
}

func TestParseHostile(t *testing.T) {
	for name, msg := range map[string][]byte{"pointer loop": loopMsg(), "huge counts": hugeCountMsg(t), "empty": nil, "header only": make([]byte, 12)} {
		t.Run(name, func(t *testing.T) {
			start := time.Now()
			rs, _ := Parse(msg, false)
			if d := time.Since(start); d > time.Second {
				t.Errorf("took %s", d)
			}
			for _, r := range rs {
				if r.Addr == netip.MustParseAddr("203.0.113.9") {
					t.Errorf("looping name parsed: %v", r)
				}
			}
		})
	}
}

func TestTableFirstLastTTL(t *testing.T) {
	tab := NewTable(0)
	srv := netip.MustParseAddr("192.0.2.53")
	t0 := time.Date(2026, 12, 5, 8, 0, 0, 0, time.UTC)
	msg := chainMsg(t)
	tab.Add(msg, false, false, srv, t0)
	tab.Add(msg, false, false, srv, t0.Add(time.Minute))
	tab.Add([]byte{1, 2, 3}, false, false, srv, t0)
	d := tab.Snapshot(3, nil)
	if d.Answers != 3 || d.Unparsed != 1 || d.Dropped != 3 {
		t.Errorf("answers %d unparsed %d dropped %d", d.Answers, d.Unparsed, d.Dropped)
	}
	ns := d.NamesOf(netip.MustParseAddr("203.0.113.7"))
	if len(ns) != 3 {
		t.Fatalf("names of 203.0.113.7: %v", ns)
	}
	for _, n := range ns {
		if !n.FirstSeen.Equal(t0) || !n.LastSeen.Equal(t0.Add(time.Minute)) || n.Answers != 2 || n.Server != srv {
			t.Errorf("%+v", n)
		}
	}
	if !d.Lossy() {
		t.Error("dropped answers but not lossy")
	}
}

func TestTableEvicts(t *testing.T) {
	tab := NewTable(16)
	t0 := time.Date(2026, 12, 5, 8, 0, 0, 0, time.UTC)
	for i := range 40 {
		msg := build(t, dnsmessage.RCodeSuccess, func(b *dnsmessage.Builder) error {
			return b.AResource(hdr("data.alienvault.com.", 60), dnsmessage.AResource{A: [4]byte{198, 51, 100, byte(i)}})
		})
		tab.Add(msg, false, false, netip.MustParseAddr("192.0.2.53"), t0.Add(time.Duration(i)*time.Second))
	}
	d := tab.Snapshot(0, nil)
	if len(d.Names) > 16 || d.Evicted == 0 {
		t.Fatalf("%d names, %d evicted", len(d.Names), d.Evicted)
	}
	// The newest survives, the oldest is gone.
	if len(d.NamesOf(netip.MustParseAddr("198.51.100.39"))) != 1 || len(d.NamesOf(netip.MustParseAddr("198.51.100.0"))) != 0 {
		t.Errorf("eviction kept the wrong names: %v", d.Names)
	}
}

// checkParse is the fuzz property: no panic, bounded time and output.
func checkParse(t testing.TB, data []byte, tcp bool) {
	start := time.Now()
	rs, _ := Parse(data, tcp)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Parse of %d bytes took %s", len(data), d)
	}
	if len(rs) > maxRecords*(maxChain+1)*maxRecords {
		t.Fatalf("%d records from %d bytes", len(rs), len(data))
	}
	for _, r := range rs {
		if !r.Addr.IsValid() || r.Name == "" || len(r.Chain) > maxChain {
			t.Fatalf("bad record %+v", r)
		}
	}
	tab := NewTable(8)
	tab.Add(data, tcp, false, netip.MustParseAddr("192.0.2.53"), time.Unix(0, 0))
	_ = tab.Snapshot(0, nil)
}

func seeds(t testing.TB) [][]byte {
	return [][]byte{chainMsg(t), loopMsg(), hugeCountMsg(t), chainMsg(t)[:40]}
}

// FuzzParse: go test ./internal/passivedns -run '^$' -fuzz FuzzParse.
// The corpus in testdata/fuzz/FuzzParse holds the hostile cases.
func FuzzParse(f *testing.F) {
	for _, s := range seeds(f) {
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, data []byte, tcp bool) { checkParse(t, data, tcp) })
}

// TestParseMutations runs the fuzz property briefly in every test run: a
// fixed-seed random mutation of the seeds (bytes flipped, cut, counts
// raised, pointers aimed backwards), bounded in count.
func TestParseMutations(t *testing.T) {
	rng := rand.New(rand.NewPCG(14, 53))
	base := seeds(t)
	n := 20000
	if testing.Short() {
		n = 2000
	}
	for i := range n {
		m := append([]byte(nil), base[i%len(base)]...)
		for range 1 + rng.IntN(4) {
			if len(m) == 0 {
				break
			}
			switch rng.IntN(4) {
			case 0:
				m[rng.IntN(len(m))] ^= byte(1 << rng.IntN(8))
			case 1:
				m = m[:rng.IntN(len(m))]
			case 2:
				if len(m) >= 12 {
					binary.BigEndian.PutUint16(m[4+2*rng.IntN(4):], uint16(rng.IntN(65536)))
				}
			case 3:
				j := rng.IntN(len(m))
				m[j] = 0xc0 | byte(rng.IntN(4))
				if j+1 < len(m) {
					m[j+1] = byte(rng.IntN(j + 1))
				}
			}
		}
		checkParse(t, m, i%7 == 0)
	}
}

// TestFuzzCorpusCommitted: the seed corpus is in the repository.
func TestFuzzCorpusCommitted(t *testing.T) {
	ents, err := os.ReadDir(filepath.Join("testdata", "fuzz", "FuzzParse"))
	if err != nil || len(ents) < 3 {
		t.Fatalf("corpus: %d files, %v", len(ents), err)
	}
}
