package audit

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"go4.org/netipx"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

// LearnNode is one node's snapshot to learn from.
type LearnNode struct {
	Name string
	Role string
	// Addresses are the node's own addresses (nil: its snapshot's
	// interface addresses): traffic between learned nodes becomes a rule
	// between their roles.
	Addresses []netip.Addr
	// Source names the snapshot (its path or URL) in citations.
	Source   string
	Snapshot *snapshot.Snapshot
}

// LearnOptions configure Learn.
type LearnOptions struct {
	// Product is the new product's ID (required); Name, Vendor and
	// Version default to the ID, "observed" and "1".
	Product string
	Name    string
	Vendor  string
	Version string
	// Site widens peers to its zones and roles; nil: none.
	Site *catalog.Site
	// Aggregate widens peers in no zone or role to their /24 (IPv4) or /64
	// (IPv6) instead of writing each address.
	Aggregate bool
	// Generated is written into the file's header (zero: left out).
	Generated time.Time
}

// learnKey is one rule being learned.
type learnKey struct {
	role  string
	dir   snapshot.Direction
	proto snapshot.Proto
	port  uint16
	peer  string // "zone X", "role y", "cidr p"
}

type learnRule struct {
	key learnKey
	// okBy: nodes that saw this traffic work (answered, or one-way
	// non-TCP traffic); seenBy: snapshot documents citing it.
	okBy     map[string]bool
	seenBy   map[string]bool
	failed   bool // only failed attempts (TCP filtered or closed)
	ok       bool // some traffic worked
	packets  uint64
	peers    map[string]bool
	nodes    map[string]bool // nodes whose snapshot shows it
	listenNo bool            // a listening socket without traffic
}

// Learn builds a catalog file (YAML, format flowaudit-catalog/v1) from what
// the nodes' snapshots show: one rule per role, direction, service and
// peer, the peer widened to the site's role or zone where the address falls
// in one (a learned node's address: its role), else to a prefix
// (Aggregate) or the address itself. Each rule cites the snapshot(s) it
// came from, whose documents are marked source: observed.
//
// What is learned: inbound services that answered, inbound traffic to a
// port a local socket listens on, outbound traffic — required when it
// worked on every node of the role (for traffic between two learned roles:
// of either end's role), optional when it only failed or worked on some of
// them —, and ports that listened without traffic (optional, any peer).
// Not learned: ICMP errors and neighbour discovery,
// fragments, traffic whose peer was not kept (overflow entries), and
// unanswered inbound attempts to ports nothing listens on — scans, not
// services; an audit against the learned catalog reports them.
func Learn(nodes []LearnNode, o LearnOptions) ([]byte, error) {
	if !catalog.ValidID(o.Product) {
		return nil, fmt.Errorf("product %q: want lower-case letters, digits and '-'", o.Product)
	}
	if len(nodes) == 0 {
		return nil, errors.New("nothing to learn from: no snapshot")
	}
	if o.Name == "" {
		o.Name = o.Product
	}
	if o.Vendor == "" {
		o.Vendor = "observed"
	}
	if o.Version == "" {
		o.Version = "1"
	}
	ver, err := catalog.ParseVersion(o.Version)
	if err != nil {
		return nil, err
	}
	owner := map[netip.Addr]string{} // address → role
	roleNodes := map[string]int{}
	docIDs := make([]string, len(nodes))
	usedIDs := map[string]bool{}
	for i := range nodes {
		n := &nodes[i]
		if !catalog.ValidID(n.Role) {
			return nil, fmt.Errorf("node %s: role %q: want lower-case letters, digits and '-'", n.Name, n.Role)
		}
		if n.Snapshot == nil {
			return nil, fmt.Errorf("node %s: no snapshot", n.Name)
		}
		if n.Addresses == nil {
			n.Addresses = n.Snapshot.LocalAddrs()
		}
		for _, a := range n.Addresses {
			owner[a.Unmap()] = n.Role
		}
		roleNodes[n.Role]++
		id := "observed-" + slug(n.Name)
		for k := 2; usedIDs[id]; k++ {
			id = "observed-" + slug(n.Name) + "-" + strconv.Itoa(k)
		}
		usedIDs[id] = true
		docIDs[i] = id
	}

	zones := map[string]bool{}
	roles := map[string]bool{}
	for r := range roleNodes {
		roles[r] = true
	}
	if o.Site != nil {
		// Every zone and role the site binds is declared, so the site
		// passes Site.Check against the learned product.
		for z := range o.Site.Zones {
			zones[z] = true
		}
		for r := range o.Site.Roles {
			roles[r] = true
		}
	}
	// inSite names the site's first role, else its first zone (in name
	// order), whose set holds what in asks about; "" if none does.
	var siteRoles, siteZones []string
	if s := o.Site; s != nil {
		siteRoles, siteZones = slices.Sorted(maps.Keys(s.Roles)), slices.Sorted(maps.Keys(s.Zones))
	}
	inSite := func(in func(*netipx.IPSet) bool) string {
		for _, r := range siteRoles {
			if in(o.Site.Roles[r]) {
				return "role " + r
			}
		}
		for _, z := range siteZones {
			if in(o.Site.Zones[z]) {
				return "zone " + z
			}
		}
		return ""
	}
	widen := func(self string, a netip.Addr) string {
		a = a.Unmap()
		if r, ok := owner[a]; ok {
			return "role " + r
		}
		if name := inSite(func(set *netipx.IPSet) bool { return set.Contains(a) }); name != "" {
			return name
		}
		bits := a.BitLen()
		if o.Aggregate {
			bits = 24
			if a.Is6() {
				bits = 64
			}
		}
		p, _ := a.Prefix(bits)
		return "cidr " + p.String()
	}
	widenPrefix := func(p netip.Prefix) string {
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		if name := inSite(func(set *netipx.IPSet) bool { return set.ContainsPrefix(p) }); name != "" {
			return name
		}
		if o.Aggregate {
			bits := 24
			if p.Addr().Is6() {
				bits = 64
			}
			if p.Bits() > bits {
				p, _ = p.Addr().Prefix(bits)
			}
		}
		return "cidr " + p.Masked().String()
	}

	rules := map[learnKey]*learnRule{}
	get := func(k learnKey) *learnRule {
		r := rules[k]
		if r == nil {
			r = &learnRule{key: k, okBy: map[string]bool{}, seenBy: map[string]bool{}, peers: map[string]bool{}, nodes: map[string]bool{}}
			rules[k] = r
		}
		return r
	}
	for i, n := range nodes {
		s := n.Snapshot
		listening := map[[2]int]bool{}
		for _, l := range s.Listening {
			if !l.Addr.IsLoopback() {
				listening[[2]int{int(l.Proto), int(l.Port)}] = true
			}
		}
		withTraffic := map[[2]int]bool{}
		for k := range s.Flows {
			f := &s.Flows[k]
			if learnSkip(f) {
				continue
			}
			st := state(f) // as the audit engine judges it
			lk := [2]int{int(f.Proto), int(f.Port)}
			if f.Direction == snapshot.Inbound {
				// Unanswered attempts on a port nothing listens on are
				// a scan's, not a service's.
				if st != stateOpen && !listening[lk] {
					continue
				}
				withTraffic[lk] = true
			}
			var peer string
			if f.Folded() {
				peer = widenPrefix(f.PeerPrefix)
			} else {
				peer = widen(n.Role, f.Peer)
			}
			key := learnKey{role: n.Role, dir: f.Direction, proto: f.Proto, port: f.Port, peer: peer}
			if pr, ok := strings.CutPrefix(peer, "role "); ok && f.Direction == snapshot.Outbound {
				// Traffic between roles is written once, as the
				// receiver's inbound rule (the catalog mirrors it for the
				// sender).
				key = learnKey{role: pr, dir: snapshot.Inbound, proto: f.Proto, port: f.Port, peer: "role " + n.Role}
				roles[pr] = true
			}
			r := get(key)
			r.seenBy[docIDs[i]] = true
			r.nodes[n.Name] = true
			r.packets += f.Packets()
			if st == stateOpen || (f.Proto != snapshot.TCP && st != stateClosed && st != stateFiltered) {
				r.ok = true
				r.okBy[n.Name] = true
			} else {
				r.failed = true
			}
			if f.Peer.IsValid() {
				r.peers[f.Peer.Unmap().String()] = true
			} else {
				r.peers[f.PeerPrefix.String()] = true
			}
			if z, ok := strings.CutPrefix(peer, "zone "); ok {
				zones[z] = true
			}
		}
		for lk := range listening {
			if withTraffic[lk] {
				continue
			}
			p := snapshot.Proto(lk[0])
			r := get(learnKey{role: n.Role, dir: snapshot.Inbound, proto: p, port: uint16(lk[1]), peer: "any"})
			r.seenBy[docIDs[i]] = true
			r.listenNo = true
		}
	}

	// A rule is required when its traffic worked on every node of its role
	// (for traffic between roles: of either end's role), optional when it
	// only failed, worked on some of those nodes, or only listened.
	everyNode := func(r *learnRule, role string) bool {
		n := 0
		for _, nd := range nodes {
			if nd.Role != role {
				continue
			}
			n++
			if !r.okBy[nd.Name] {
				return false
			}
		}
		return n > 0
	}
	required := func(r *learnRule) bool {
		if !r.ok || r.listenNo {
			return false
		}
		if everyNode(r, r.key.role) {
			return true
		}
		pr, isRole := strings.CutPrefix(r.key.peer, "role ")
		return isRole && everyNode(r, pr)
	}

	keys := make([]learnKey, 0, len(rules))
	for k := range rules {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.role != b.role {
			return a.role < b.role
		}
		if a.dir != b.dir {
			return a.dir < b.dir
		}
		if a.proto != b.proto {
			return a.proto < b.proto
		}
		if a.port != b.port {
			return a.port < b.port
		}
		return a.peer < b.peer
	})

	var b strings.Builder
	q := func(s string) string {
		var jb strings.Builder
		enc := json.NewEncoder(&jb)
		enc.SetEscapeHTML(false)
		_ = enc.Encode(s)
		return strings.TrimSuffix(jb.String(), "\n")
	}
	famID := o.Product + "-observed"
	fmt.Fprintf(&b, "# Learned by flowaudit catalog learn from %d snapshot(s)", len(nodes))
	if !o.Generated.IsZero() {
		fmt.Fprintf(&b, " at %s", o.Generated.UTC().Format(time.RFC3339))
	}
	b.WriteString(".\n# A baseline of what was observed, not a vendor document: review every rule before\n# auditing against it (docs/DEPLOYMENT.md, \"Learning a baseline\").\n")
	fmt.Fprintf(&b, "format: %s\nproduct:\n  id: %s\n  name: %s\n  vendor: %s\n", catalog.FormatCatalog, o.Product, q(o.Name), q(o.Vendor))
	fmt.Fprintf(&b, "family:\n  id: %s\n  title: %s\n  versions: %s\n  latest: %s\n", famID, q(o.Name+" (observed)"), q(">="+ver.String()), q(ver.String()))
	b.WriteString("\ndocuments:\n")
	for i, n := range nodes {
		s := n.Snapshot
		host := s.Hostname
		if host == "" {
			host = n.Name
		}
		fmt.Fprintf(&b, "  - id: %s\n    title: %s\n    source: %s\n", docIDs[i],
			q(fmt.Sprintf("snapshot %s of %s (role %s), %s – %s", n.Source, host, n.Role,
				s.Start.UTC().Format(time.RFC3339), s.End.UTC().Format(time.RFC3339))), catalog.SourceObserved)
	}
	b.WriteString("\nroles:\n")
	for _, r := range slices.Sorted(maps.Keys(roles)) {
		title := "role seen as a peer only"
		if roleNodes[r] > 0 {
			title = fmt.Sprintf("%d node(s) learned", roleNodes[r])
		}
		fmt.Fprintf(&b, "  - id: %s\n    title: %s\n", r, q(title))
	}
	if len(zones) > 0 {
		b.WriteString("\nzones:\n")
		for _, z := range slices.Sorted(maps.Keys(zones)) {
			fmt.Fprintf(&b, "  - id: %s\n", z)
		}
	}
	b.WriteString("\nrules:\n")
	window := func(doc string) string {
		for i := range nodes {
			if docIDs[i] == doc {
				s := nodes[i].Snapshot
				return fmt.Sprintf("window %s – %s (%s)", s.Start.UTC().Format(time.RFC3339), s.End.UTC().Format(time.RFC3339), s.Window().Round(time.Second))
			}
		}
		return ""
	}
	ruleIDs := map[string]bool{}
	for _, k := range keys {
		r := rules[k]
		dir := "in"
		if k.dir == snapshot.Outbound {
			dir = "out"
		}
		id := fmt.Sprintf("%s-%s-%s-%s", dir, k.proto, portSlug(k.proto, k.port), slug(k.peer))
		base := id
		for n := 2; ruleIDs[id]; n++ {
			id = base + "-" + strconv.Itoa(n)
		}
		ruleIDs[id] = true
		req := "optional"
		if required(r) {
			req = "required"
		}
		fmt.Fprintf(&b, "  - id: %s\n    role: %s\n    direction: %s\n    proto: %s\n", id, k.role, k.dir, k.proto)
		switch {
		case k.proto.HasPorts():
			fmt.Fprintf(&b, "    ports: %d\n", k.port)
		case k.proto.IsICMP():
			fmt.Fprintf(&b, "    types: %d\n", k.port>>8)
		}
		kind, val, _ := strings.Cut(k.peer, " ")
		switch kind {
		case "any":
			b.WriteString("    peer: {any: true}\n")
		default:
			fmt.Fprintf(&b, "    peer: {%s: %s}\n", kind, q(val))
		}
		fmt.Fprintf(&b, "    requirement: %s\n", req)
		docs := slices.Sorted(maps.Keys(r.seenBy))
		var purpose, quote string
		switch {
		case r.listenNo:
			purpose = fmt.Sprintf("a socket listened on %s/%d; no traffic in the window", k.proto, k.port)
			quote = "listening socket, no traffic"
		default:
			what := "answered"
			if r.failed && !r.ok {
				what = "attempts only, never answered"
			}
			purpose = fmt.Sprintf("observed %s %s/%s with %s", k.dir, k.proto, portSlug(k.proto, k.port), k.peer)
			quote = fmt.Sprintf("seen by %s: %d packets, peer(s) %s; %s", learnPeerList(r.nodes, 5), r.packets, learnPeerList(r.peers, 5), what)
		}
		fmt.Fprintf(&b, "    purpose: %s\n", q(purpose))
		fmt.Fprintf(&b, "    citation: {doc: %s, section: %s, quote: %s}\n", docs[0], q(window(docs[0])), q(quote))
		if len(docs) > 1 {
			b.WriteString("    see_also:\n")
			for _, d := range docs[1:] {
				fmt.Fprintf(&b, "      - {doc: %s, section: %s}\n", d, q(window(d)))
			}
		}
	}
	if len(keys) == 0 {
		return nil, errors.New("nothing to learn: the snapshots show no service traffic")
	}
	// The result must load: a learned catalog that does not is a bug here.
	if _, err := catalog.Parse(o.Product+".yaml", []byte(b.String())); err != nil {
		return nil, fmt.Errorf("learned catalog does not load: %w", err)
	}
	return []byte(b.String()), nil
}

func learnPeerList(m map[string]bool, n int) string {
	ks := slices.Sorted(maps.Keys(m))
	if len(ks) > n {
		return strings.Join(ks[:n], ", ") + fmt.Sprintf(" and %d more", len(ks)-n)
	}
	return strings.Join(ks, ", ")
}

func portSlug(p snapshot.Proto, port uint16) string {
	if p.IsICMP() {
		return "type" + strconv.Itoa(int(port>>8))
	}
	if !p.HasPorts() {
		return "all"
	}
	return strconv.Itoa(int(port))
}

// slug turns a name into lower-case letters, digits and '-'.
func slug(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(s) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
			dash = false
		} else if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	out := strings.TrimRight(b.String(), "-")
	if out == "" {
		return "x"
	}
	return out
}

// learnSkip: flows that are no service: ICMP errors and neighbour
// discovery, fragments, port traffic of unknown direction, entries
// without a peer.
func learnSkip(f *snapshot.Flow) bool {
	if infrastructure(f) || f.Fragment || f.Direction == snapshot.Unknown {
		return true
	}
	return !f.Peer.IsValid() && !f.Folded()
}
