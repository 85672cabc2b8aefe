package catalog

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/flowaudit/flowaudit/vocab"
)

// Catalog is a set of products, each with one or more version families.
type Catalog struct {
	products map[string]*Product
	order    []string // product IDs, sorted
	files    []string // files the catalog was read from
}

// Product is an appliance (USM Appliance, UTMStack, VSOS, …). Its port
// matrices live in families, each covering a version range and usually
// coming from one vendor document family (one YAML file).
type Product struct {
	ID      string
	Name    string
	Vendor  string
	Aliases []string

	families []*Family // sorted by version range (lowest first)
}

// Family is the part of a product's catalog that one file describes: a
// version range with its documents, roles, zones, conditions, deployment
// profiles and rules.
type Family struct {
	// ID is unique within the product and prefixes every rule ID
	// ("utmstack11" → "utmstack11.manager.agent-9000").
	ID    string
	Title string
	// Versions is the range of releases the family describes; Latest the
	// newest release its documents name, used when no version is given.
	Versions Range
	Latest   Version

	Documents []Document
	// Editions are the editions of the family's document, oldest first
	// (USM: the AlienVault and the LevelBlue edition of one page); empty
	// when the family follows one document. A matrix follows one edition:
	// rules restricted to other editions are left out. The newest (last)
	// is the default.
	Editions   []EditionInfo
	Roles      []RoleInfo
	Zones      []ZoneInfo
	Conditions []ConditionInfo
	Profiles   []Profile
	// Readings record ambiguities and gaps of the documents that are not
	// attached to one rule (for example a table cell lost in the text).
	Readings []Reading
	// Source is the file the family was read from.
	Source string

	rules map[string][]Rule // by role, including mirrored rules, file order
}

// Document is a vendor document (or a supplementary public source) that
// rules cite.
type Document struct {
	// ID is what citations name: the seed file name for the vendor
	// documents (e.g. "004_c793c473800cb152.txt").
	ID    string `json:"id"`
	Title string `json:"title"`
	// Source is "seed" for the vendor documents the catalog was built
	// from, "supplementary" for other public material used to fill a gap
	// the seed text leaves (the USM port diagram), "user" for anything else.
	Source string `json:"source"`
	URL    string `json:"url,omitempty"`
}

// Document sources.
const (
	SourceSeed          = "seed"
	SourceSupplementary = "supplementary"
	SourceUser          = "user"
	// SourceObserved marks a document that is a recording, not a vendor
	// text: the snapshots a learned catalog (flowaudit catalog learn,
	// audit.Learn) was built from.
	SourceObserved = "observed"
)

// EditionInfo describes an edition of a family's document: the matrix
// following it has the rules common to all editions and those restricted
// to it.
type EditionInfo struct {
	Name string `json:"name"`
	// Document is the ID of the document (edition) it follows.
	Document    string `json:"document"`
	Description string `json:"description,omitempty"`
}

// DefaultEdition returns the edition a matrix follows when none is asked
// for: the newest (the last declared); "" when the family has none.
func (f *Family) DefaultEdition() string {
	if len(f.Editions) == 0 {
		return ""
	}
	return f.Editions[len(f.Editions)-1].Name
}

// Edition returns an edition of the family.
func (f *Family) Edition(name string) (EditionInfo, bool) {
	for _, e := range f.Editions {
		if e.Name == name {
			return e, true
		}
	}
	return EditionInfo{}, false
}

// RoleInfo describes a role: a kind of host the catalog has rules for.
type RoleInfo struct {
	Name        string `json:"name"`
	Title       string `json:"title,omitempty"`
	Description string `json:"description,omitempty"`
	// Zone is the zone placeholder where hosts of this role live, if the
	// document names one (UTMStack v11 agents: AGENT_NETWORK). A site that
	// does not bind the role falls back to the zone for peers of this role.
	Zone string `json:"zone,omitempty"`
	// Includes makes a composite role (All-in-One): it has the rules of
	// the included roles, except traffic between them, which is internal.
	Includes []string `json:"includes,omitempty"`
}

// ZoneInfo describes a zone placeholder that a site file binds to
// addresses.
type ZoneInfo struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
}

// ConditionInfo describes a named condition that switches rules on or off
// per audit (vpn, ha, icap, multi-node, netflow …). Every condition is off
// unless switched on.
type ConditionInfo struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
}

// Profile is a deployment profile: a way to deploy the product and the
// roles it involves (USM "distributed" vs "all-in-one").
type Profile struct {
	Name        string   `json:"name"`
	Description string   `json:"description,omitempty"`
	Roles       []string `json:"roles"`
}

// Reading records how an ambiguity or gap of a document was read.
type Reading struct {
	ID       string    `json:"id"`
	Citation Citation  `json:"citation"`
	Source   SourcePos `json:"source"`
}

// Citation points a rule at the document text it comes from.
type Citation struct {
	Doc     string `json:"doc"`
	Title   string `json:"title,omitempty"`
	Source  string `json:"source"` // seed, supplementary or user (from the document)
	URL     string `json:"url,omitempty"`
	Section string `json:"section,omitempty"`
	Quote   string `json:"quote,omitempty"`
	// Note records the reading chosen where the document is ambiguous,
	// self-contradictory or silent.
	Note string `json:"note,omitempty"`
}

// Supplementary reports whether the citation is to material outside the
// seed documents.
func (c Citation) Supplementary() bool { return c.Source == SourceSupplementary }

// SourcePos is where a rule is written.
type SourcePos struct {
	File string `json:"file"`
	Line int    `json:"line"`
}

func (s SourcePos) String() string { return s.File + ":" + strconv.Itoa(s.Line) }

// Requirement says whether traffic matching a rule is expected.
type Requirement uint8

const (
	// Required: the documented deployment needs this traffic.
	Required Requirement = iota
	// Optional: allowed, but a working deployment may not show it.
	Optional
	// Conditional: required when Condition holds (rules whose condition
	// does not hold are not in an effective matrix at all).
	Conditional
)

var requirementNames = [...]string{"required", "optional", "conditional"}

func (r Requirement) String() string {
	if int(r) < len(requirementNames) {
		return requirementNames[r]
	}
	return "requirement(" + strconv.Itoa(int(r)) + ")"
}

// ParseRequirement parses the names String returns.
func ParseRequirement(s string) (Requirement, error) {
	for i, n := range requirementNames {
		if s == n {
			return Requirement(i), nil
		}
	}
	return 0, fmt.Errorf("unknown requirement %q (want required, optional or conditional)", s)
}

func (r Requirement) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

func (r *Requirement) UnmarshalText(b []byte) error {
	v, err := ParseRequirement(string(b))
	if err == nil {
		*r = v
	}
	return err
}

// PeerKind is what a rule's peer is.
type PeerKind uint8

const (
	PeerAny  PeerKind = iota // any address
	PeerRole                 // a host of another (or the same) role of the product
	PeerZone                 // a zone placeholder bound by the site file
	PeerCIDR                 // a literal prefix
	PeerDNS                  // a DNS name, bound to addresses by the site file
)

var peerKindNames = [...]string{"any", "role", "zone", "cidr", "dns"}

func (k PeerKind) String() string {
	if int(k) < len(peerKindNames) {
		return peerKindNames[k]
	}
	return "peer(" + strconv.Itoa(int(k)) + ")"
}

func (k PeerKind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

func (k *PeerKind) UnmarshalText(b []byte) error {
	for i, n := range peerKindNames {
		if string(b) == n {
			*k = PeerKind(i)
			return nil
		}
	}
	return fmt.Errorf("unknown peer kind %q", b)
}

// Peer is the other end of a rule's traffic.
type Peer struct {
	Kind PeerKind
	// Role is set for PeerRole; Zone for PeerZone, and for PeerRole when
	// the role has a zone to fall back on.
	Role   string
	Zone   string
	Prefix netip.Prefix // PeerCIDR
	Host   string       // PeerDNS
}

func (p Peer) String() string {
	switch p.Kind {
	case PeerAny:
		return "any"
	case PeerRole:
		if p.Zone != "" {
			return "role " + p.Role + " (zone " + p.Zone + ")"
		}
		return "role " + p.Role
	case PeerZone:
		return "zone " + p.Zone
	case PeerCIDR:
		return "cidr " + p.Prefix.String()
	case PeerDNS:
		return "dns " + p.Host
	}
	return p.Kind.String()
}

type peerJSON struct {
	Kind   PeerKind `json:"kind"`
	Role   string   `json:"role,omitempty"`
	Zone   string   `json:"zone,omitempty"`
	Prefix string   `json:"prefix,omitempty"`
	Host   string   `json:"host,omitempty"`
}

func (p Peer) MarshalJSON() ([]byte, error) {
	j := peerJSON{Kind: p.Kind, Role: p.Role, Zone: p.Zone, Host: p.Host}
	if p.Prefix.IsValid() {
		j.Prefix = p.Prefix.String()
	}
	return json.Marshal(j)
}

func (p *Peer) UnmarshalJSON(b []byte) error {
	var j peerJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*p = Peer{Kind: j.Kind, Role: j.Role, Zone: j.Zone, Host: j.Host}
	if j.Prefix != "" {
		pf, err := netip.ParsePrefix(j.Prefix)
		if err != nil {
			return err
		}
		p.Prefix = pf
	}
	return nil
}

// PortRange is an inclusive range of service ports. For ICMP and ICMPv6
// the values are type<<8|code, as in snapshot flows.
type PortRange struct {
	Lo uint16 `json:"lo"`
	Hi uint16 `json:"hi"`
}

// Contains reports whether port is in the range.
func (r PortRange) Contains(port uint16) bool { return port >= r.Lo && port <= r.Hi }

func (r PortRange) String() string {
	if r.Lo == r.Hi {
		return strconv.Itoa(int(r.Lo))
	}
	if r.Lo == 0 && r.Hi == 65535 {
		return "any"
	}
	return strconv.Itoa(int(r.Lo)) + "-" + strconv.Itoa(int(r.Hi))
}

// Rule is one documented traffic pattern of a role.
type Rule struct {
	// ID is stable and unique within the product:
	// "<family>.<role>.<rule>" for written rules, with ".to-<role>" or
	// ".from-<role>" appended for the mirrored counterpart the catalog
	// derives for the peer role.
	ID string `json:"id"`
	// Role is the role the rule was written for. It differs from the
	// matrix role when the matrix role is composite (All-in-One).
	Role string `json:"role"`
	// Direction is relative to the audited role: Inbound means the peer
	// connects to the role, Outbound that the role connects to the peer.
	Direction vocab.Direction `json:"direction"`
	// Protos lists the protocols; "tcp+udp" in the file gives two.
	Protos []vocab.Proto `json:"protos"`
	// Ports is empty for protocols without ports (GRE, ESP) and for ICMP
	// rules that accept any type; "any" is the range 0-65535.
	Ports       []PortRange `json:"ports,omitempty"`
	Peer        Peer        `json:"peer"`
	Requirement Requirement `json:"requirement"`
	// Condition gates the rule: "vpn" or the negation "!vpn". A rule in
	// an effective matrix had its condition hold.
	Condition string `json:"condition,omitempty"`
	// Versions is the release range the rule is in force for; empty for
	// the whole family. Deprecated rules are listed for releases in
	// their deprecated range, so traffic there is recognised as using a
	// port the vendor retired rather than as undocumented.
	Versions   string `json:"versions,omitempty"`
	Deprecated bool   `json:"deprecated,omitempty"`
	// Editions restricts the rule to these editions of the family's
	// document; empty: every edition.
	Editions []string `json:"editions,omitempty"`
	// Configurable marks ports the document says can be changed; a site
	// file may then give the port in use (Site.ApplyPorts).
	Configurable bool `json:"configurable,omitempty"`
	// DefaultPorts are the document's ports when a site file overrode
	// them (Ports holds the site's); PortsFrom is the site file line.
	DefaultPorts []PortRange `json:"default_ports,omitempty"`
	PortsFrom    SourcePos   `json:"ports_from,omitzero"`
	Purpose      string      `json:"purpose"`
	Citation     Citation    `json:"citation"`
	SeeAlso      []Citation  `json:"see_also,omitempty"`
	// MirrorOf is the ID of the written rule a mirrored rule was derived
	// from (peer-role rules are written once, for one side).
	MirrorOf string    `json:"mirror_of,omitempty"`
	Source   SourcePos `json:"source"`

	inForce    Range
	deprecated Range
	hasDepr    bool
}

// Matches reports whether traffic of protocol p to service port port (or
// ICMP type<<8|code) falls under the rule's protocol and ports. It does
// not look at direction or peer.
func (r Rule) Matches(p vocab.Proto, port uint16) bool {
	if !slices.Contains(r.Protos, p) {
		return false
	}
	if !p.HasPorts() && !p.IsICMP() {
		return true
	}
	if len(r.Ports) == 0 {
		return true
	}
	for _, pr := range r.Ports {
		if pr.Contains(port) {
			return true
		}
	}
	return false
}

// ProtoString returns the protocols joined with "+" ("tcp+udp").
func (r Rule) ProtoString() string {
	s := make([]string, len(r.Protos))
	for i, p := range r.Protos {
		s[i] = p.String()
	}
	return strings.Join(s, "+")
}

// PortString returns the ports as written in a catalog ("139,445",
// "1024-65535", "any"); "-" for portless protocols, ICMP as "type N".
func (r Rule) PortString() string {
	if len(r.Ports) == 0 {
		if len(r.Protos) > 0 && r.Protos[0].IsICMP() {
			return "any type"
		}
		return "-"
	}
	icmp := len(r.Protos) > 0 && r.Protos[0].IsICMP()
	s := make([]string, len(r.Ports))
	for i, p := range r.Ports {
		if icmp {
			lo, hi := p.Lo>>8, p.Hi>>8
			if lo == hi {
				s[i] = "type " + strconv.Itoa(int(lo))
			} else {
				s[i] = "type " + strconv.Itoa(int(lo)) + "-" + strconv.Itoa(int(hi))
			}
			continue
		}
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

// Matrix is the effective port matrix of one role of one product release
// with a given set of conditions switched on.
type Matrix struct {
	Product     string `json:"product"`
	ProductName string `json:"product_name"`
	Version     string `json:"version"`
	Family      string `json:"family"`
	// Edition is the edition of the document the matrix follows, for a
	// family with several (USM: alienvault, levelblue); "" otherwise.
	Edition string `json:"edition,omitempty"`
	Role    string `json:"role"`
	// Conditions are the conditions switched on, sorted.
	Conditions []string `json:"conditions"`
	Rules      []Rule   `json:"rules"`
}
