// Package passivedns turns the DNS answers a host received into an
// address → names table (snapshot.DNS): A and AAAA records, CNAME chains,
// compressed names, with first/last seen and TTL. The datapath (package
// bpf) hands it the raw answers; it never touches the kernel.
package passivedns

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

// DefaultMaxNames bounds the table: (address, name) pairs. When it is
// full, the eighth of the entries seen least recently are dropped
// (counted in snapshot.DNS.Evicted).
const DefaultMaxNames = 65536

// Limits of one message's parse: a hostile answer cannot make the parser
// loop or allocate without bound (dnsmessage itself bounds compression
// pointers).
const (
	maxRecords  = 256 // answer records looked at per message
	maxChain    = 16  // CNAME links followed from an address back to a name
	maxMsgBytes = 65535
)

// Errors of Parse.
var (
	ErrNotResponse = errors.New("not a DNS response")
	ErrIncomplete  = errors.New("TCP segment does not hold a whole DNS message")
)

// Record is one (address, name) a message gave: Name led to Addr through
// Chain (the CNAME targets after Name), valid for TTL seconds.
type Record struct {
	Addr  netip.Addr
	Name  string
	Chain []string
	TTL   uint32
}

// Parse reads one DNS message (over TCP: with its two-byte length prefix)
// and returns every (address, name) pair its answer section gives: each
// A/AAAA record's owner name and every name whose CNAME chain (in the
// same message) ends at that owner. A message cut short yields the
// records before the cut, and the error that stopped it.
func Parse(msg []byte, tcp bool) ([]Record, error) {
	if tcp {
		if len(msg) < 2 {
			return nil, ErrIncomplete
		}
		n := int(binary.BigEndian.Uint16(msg))
		if len(msg)-2 < n {
			return nil, ErrIncomplete
		}
		msg = msg[2 : 2+n]
	}
	if len(msg) > maxMsgBytes {
		msg = msg[:maxMsgBytes]
	}
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil {
		return nil, fmt.Errorf("dns header: %w", err)
	}
	if !h.Response {
		return nil, ErrNotResponse
	}
	if h.RCode != dnsmessage.RCodeSuccess {
		return nil, nil
	}
	if err := p.SkipAllQuestions(); err != nil {
		return nil, fmt.Errorf("dns question: %w", err)
	}
	type addrTTL struct {
		addr netip.Addr
		ttl  uint32
	}
	cname := map[string]struct { // alias → target
		target string
		ttl    uint32
	}{}
	addrs := map[string][]addrTTL{} // owner → addresses
	var owners []string
	var perr error
	for i := 0; i < maxRecords; i++ {
		rh, err := p.AnswerHeader()
		if errors.Is(err, dnsmessage.ErrSectionDone) {
			break
		}
		if err != nil {
			perr = fmt.Errorf("dns answer %d: %w", i, err)
			break
		}
		if rh.Class != dnsmessage.ClassINET {
			if err := p.SkipAnswer(); err != nil {
				perr = fmt.Errorf("dns answer %d: %w", i, err)
				break
			}
			continue
		}
		owner := canon(rh.Name.String())
		if owner == "" {
			rh.Type = 0 // the root holds no host address: skip the record
		}
		switch rh.Type {
		case dnsmessage.TypeA:
			r, err := p.AResource()
			if err != nil {
				perr = fmt.Errorf("dns answer %d: %w", i, err)
				break
			}
			if addrs[owner] == nil {
				owners = append(owners, owner)
			}
			addrs[owner] = append(addrs[owner], addrTTL{netip.AddrFrom4(r.A), rh.TTL})
			continue
		case dnsmessage.TypeAAAA:
			r, err := p.AAAAResource()
			if err != nil {
				perr = fmt.Errorf("dns answer %d: %w", i, err)
				break
			}
			if addrs[owner] == nil {
				owners = append(owners, owner)
			}
			addrs[owner] = append(addrs[owner], addrTTL{netip.AddrFrom16(r.AAAA).Unmap(), rh.TTL})
			continue
		case dnsmessage.TypeCNAME:
			r, err := p.CNAMEResource()
			if err != nil {
				perr = fmt.Errorf("dns answer %d: %w", i, err)
				break
			}
			if canon(r.CNAME.String()) == "" {
				continue
			}
			cname[owner] = struct {
				target string
				ttl    uint32
			}{canon(r.CNAME.String()), rh.TTL}
			continue
		default:
			if err := p.SkipAnswer(); err != nil {
				perr = fmt.Errorf("dns answer %d: %w", i, err)
				break
			}
			continue
		}
		break // a resource body failed
	}
	// Reverse the CNAME links: target → aliases pointing to it.
	aliases := map[string][]string{}
	for a, c := range cname {
		aliases[c.target] = append(aliases[c.target], a)
	}
	for _, l := range aliases {
		sort.Strings(l)
	}
	var out []Record
	for _, owner := range owners {
		for _, at := range addrs[owner] {
			out = append(out, Record{Addr: at.addr, Name: owner, TTL: at.ttl})
			// Walk back along the chain, breadth first, each name once.
			type step struct {
				name  string
				chain []string
				ttl   uint32
			}
			seen := map[string]bool{owner: true}
			queue := []step{{owner, nil, at.ttl}}
			for depth := 0; depth < maxChain && len(queue) > 0; depth++ {
				var next []step
				for _, s := range queue {
					for _, a := range aliases[s.name] {
						if seen[a] {
							continue
						}
						seen[a] = true
						chain := append([]string{s.name}, s.chain...)
						ttl := min(s.ttl, cname[a].ttl)
						out = append(out, Record{Addr: at.addr, Name: a, Chain: chain, TTL: ttl})
						next = append(next, step{a, chain, ttl})
					}
				}
				queue = next
			}
		}
	}
	return out, perr
}

// canon lower-cases a name and drops its trailing dot.
func canon(n string) string { return strings.TrimSuffix(strings.ToLower(n), ".") }

type key struct {
	addr netip.Addr
	name string
}

// Table accumulates the records of many answers. It is safe for
// concurrent use.
type Table struct {
	mu      sync.Mutex
	max     int
	names   map[key]*snapshot.DNSName
	answers uint64
	cut     uint64
	bad     uint64
	evicted uint64
}

// NewTable returns an empty table of at most max entries (DefaultMaxNames
// when max <= 0).
func NewTable(max int) *Table {
	if max <= 0 {
		max = DefaultMaxNames
	}
	return &Table{max: max, names: map[key]*snapshot.DNSName{}}
}

// Add parses one answer received at from server. cut: the datapath
// handed over only the start of a longer answer.
func (t *Table) Add(msg []byte, tcp, cut bool, server netip.Addr, at time.Time) {
	recs, err := Parse(msg, tcp)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.answers++
	if cut {
		t.cut++
	}
	if err != nil && len(recs) == 0 && !cut {
		t.bad++
	}
	for _, r := range recs {
		t.put(r, server.Unmap(), at)
	}
}

func (t *Table) put(r Record, server netip.Addr, at time.Time) {
	k := key{r.Addr, r.Name}
	n := t.names[k]
	if n == nil {
		if len(t.names) >= t.max {
			t.evict()
		}
		n = &snapshot.DNSName{Addr: r.Addr, Name: r.Name, FirstSeen: at, LastSeen: at}
		t.names[k] = n
	}
	if at.Before(n.FirstSeen) {
		n.FirstSeen = at
	}
	if !at.Before(n.LastSeen) {
		n.LastSeen = at
		n.TTL = r.TTL
		n.Chain = r.Chain
		n.Server = server
	}
	n.Answers++
}

// evict drops the eighth of the entries seen least recently.
func (t *Table) evict() {
	all := make([]*snapshot.DNSName, 0, len(t.names))
	for _, n := range t.names {
		all = append(all, n)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].LastSeen.Before(all[j].LastSeen) })
	drop := max(len(all)/8, 1)
	for _, n := range all[:drop] {
		delete(t.names, key{n.Addr, n.Name})
	}
	t.evicted += uint64(drop)
}

// Snapshot returns the table as a snapshot section, sorted; dropped is the
// datapath's count of answers it could not hand over. Times pass through
// conv (nil: unchanged), as replay maps them to capture time.
func (t *Table) Snapshot(dropped uint64, conv func(time.Time) (time.Time, time.Time)) *snapshot.DNS {
	t.mu.Lock()
	defer t.mu.Unlock()
	d := &snapshot.DNS{Answers: t.answers, Dropped: dropped, Cut: t.cut, Unparsed: t.bad, Evicted: t.evicted,
		Names: make([]snapshot.DNSName, 0, len(t.names))}
	for _, n := range t.names {
		c := *n
		c.Chain = append([]string(nil), n.Chain...)
		if conv != nil {
			c.FirstSeen, _ = conv(c.FirstSeen)
			_, c.LastSeen = conv(c.LastSeen)
		}
		c.FirstSeen, c.LastSeen = c.FirstSeen.UTC(), c.LastSeen.UTC()
		d.Names = append(d.Names, c)
	}
	d.Sort()
	return d
}

// Reset empties the table.
func (t *Table) Reset() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.names = map[key]*snapshot.DNSName{}
	t.answers, t.cut, t.bad, t.evicted = 0, 0, 0, 0
}
