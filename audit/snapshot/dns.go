package snapshot

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"
)

// DNS is what the recorder learned from the DNS answers this host received
// during the recording (passive DNS, docs/DNS.md): which names each peer
// address was given for. Absent in snapshots of builds without passive
// DNS; an audit then binds DNS names from the site file only.
type DNS struct {
	// Answers counts the DNS answers the datapath handed over (UDP and
	// TCP from port 53, received); Dropped those it could not, because
	// the ring buffer was full (lost: names may be missing); Cut those
	// longer than the capture length, parsed as far as they went.
	Answers uint64 `json:"answers"`
	Dropped uint64 `json:"dropped"`
	Cut     uint64 `json:"cut,omitempty"`
	// Unparsed counts answers that were not a well-formed DNS response
	// (or a TCP segment that does not start a whole message).
	Unparsed uint64 `json:"unparsed,omitempty"`
	// Evicted counts names dropped because the table was full (the
	// oldest went first).
	Evicted uint64 `json:"evicted,omitempty"`
	// Names: one entry per (address, name), sorted by address and name.
	Names []DNSName `json:"names"`
}

// DNSName is one name an address was given for.
type DNSName struct {
	Addr netip.Addr `json:"addr"`
	// Name is lower-case, without the trailing dot: the name asked for,
	// or any name along the CNAME chain that led to Addr.
	Name string `json:"name"`
	// Chain lists the CNAME targets from Name to the record that holds
	// Addr (empty when Name holds it).
	Chain []string `json:"chain,omitempty"`
	// Server is the address that answered (the last answer).
	Server netip.Addr `json:"server,omitzero"`
	// FirstSeen and LastSeen bound the answers; TTL is the last answer's
	// time to live in seconds (the smallest along its chain).
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	TTL       uint32    `json:"ttl"`
	Answers   uint64    `json:"answers"`
}

// Lossy reports whether answers or names were lost.
func (d *DNS) Lossy() bool { return d != nil && (d.Dropped > 0 || d.Evicted > 0) }

// Sort orders the names by address, then name.
func (d *DNS) Sort() {
	sort.Slice(d.Names, func(i, j int) bool {
		a, b := &d.Names[i], &d.Names[j]
		if c := a.Addr.Compare(b.Addr); c != 0 {
			return c < 0
		}
		return a.Name < b.Name
	})
}

// NamesOf returns the entries for addr (an IPv4-mapped address is
// unmapped), in the table's order.
func (d *DNS) NamesOf(addr netip.Addr) []DNSName {
	if d == nil {
		return nil
	}
	addr = addr.Unmap()
	i := sort.Search(len(d.Names), func(i int) bool { return d.Names[i].Addr.Compare(addr) >= 0 })
	j := i
	for j < len(d.Names) && d.Names[j].Addr == addr {
		j++
	}
	return d.Names[i:j]
}

// Resolved reports whether any answer gave an address for a name that
// pattern matches (MatchName).
func (d *DNS) Resolved(pattern string) bool {
	if d == nil {
		return false
	}
	for i := range d.Names {
		if MatchName(pattern, d.Names[i].Name) {
			return true
		}
	}
	return false
}

// ValidFor reports whether the answer makes addr an address of its name
// for traffic that started at first: the answer was seen at or before
// first, or at most its TTL after it (the appliance may have held the
// record in its cache from an earlier answer with the same data).
func (n *DNSName) ValidFor(first time.Time) bool {
	if first.IsZero() {
		return true
	}
	return !n.FirstSeen.After(first.Add(time.Duration(n.TTL) * time.Second))
}

// MatchName reports whether name matches pattern: equal (case-insensitive,
// a trailing dot ignored), or pattern "*.example.com" and name a name
// below example.com, at any depth (not example.com itself).
func MatchName(pattern, name string) bool {
	pattern = strings.TrimSuffix(strings.ToLower(pattern), ".")
	name = strings.TrimSuffix(strings.ToLower(name), ".")
	if suffix, ok := strings.CutPrefix(pattern, "*."); ok {
		return strings.HasSuffix(name, "."+suffix)
	}
	return pattern == name
}

func (d *DNS) validate() error {
	for i := range d.Names {
		n := &d.Names[i]
		switch {
		case !n.Addr.IsValid():
			return fmt.Errorf("dns.names[%d]: missing addr", i)
		case n.Name == "":
			return fmt.Errorf("dns.names[%d]: missing name", i)
		case n.LastSeen.Before(n.FirstSeen):
			return fmt.Errorf("dns.names[%d]: last_seen before first_seen", i)
		}
	}
	return nil
}
