// Package snapshot defines flowaudit's versioned snapshot file: what the
// datapath observed on one or more interfaces during a time window. It is the
// only thing that crosses from the live recorder (package bpf) to the audit
// engine, so an audit can run offline, on another machine, without root.
//
// The format is documented in docs/SNAPSHOT.md.
package snapshot

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"time"
	"unsafe"

	"github.com/flowaudit/flowaudit/internal/hugemem"
	"github.com/flowaudit/flowaudit/vocab"
)

// FormatVersion is the snapshot format version written by this build.
// Version 1 files are still read (see upgradeV1).
const FormatVersion = 2

// ErrFormat is wrapped by every error about a malformed snapshot file.
var ErrFormat = errors.New("malformed snapshot")

// ErrNewerVersion is wrapped by the error about a snapshot whose version is
// higher than FormatVersion: a newer flowaudit wrote it, and this build
// cannot know what its fields mean.
var ErrNewerVersion = errors.New("snapshot written by a newer flowaudit")

// The flow vocabulary lives in package vocab (a leaf, so catalog/ needs
// nothing of the snapshot); these aliases keep every existing name.

// Direction tells who initiated the traffic of a flow (vocab.Direction).
type Direction = vocab.Direction

// Directions.
const (
	Unknown  = vocab.Unknown
	Inbound  = vocab.Inbound
	Outbound = vocab.Outbound
)

// ParseDirection parses the names produced by Direction.String.
func ParseDirection(s string) (Direction, error) { return vocab.ParseDirection(s) }

// Proto is an IP protocol number (vocab.Proto).
type Proto = vocab.Proto

// Protocol numbers flowaudit names.
const (
	ICMP   = vocab.ICMP
	TCP    = vocab.TCP
	UDP    = vocab.UDP
	GRE    = vocab.GRE
	ESP    = vocab.ESP
	AH     = vocab.AH
	ICMPv6 = vocab.ICMPv6
	SCTP   = vocab.SCTP
)

// ParseProto accepts a protocol name ("tcp", "gre", …), "ip-N" or a
// decimal protocol number 0–255.
func ParseProto(s string) (Proto, error) { return vocab.ParseProto(s) }

// Evidence counts the TCP and ICMP packets that tell whether a service port
// is open, closed or filtered. "In"/"Out" are packet directions on the wire.
type Evidence struct {
	// For inbound flows (a peer connects to a local port).
	SynIn           uint64 `json:"syn_in,omitempty"`
	SynAckOut       uint64 `json:"synack_out,omitempty"`
	RstOut          uint64 `json:"rst_out,omitempty"`
	ICMPClosedOut   uint64 `json:"icmp_closed_out,omitempty"`   // we answered port-unreachable
	ICMPFilteredOut uint64 `json:"icmp_filtered_out,omitempty"` // we answered admin-prohibited / other unreachable
	// For outbound flows (this host connects to a remote port).
	SynOut         uint64 `json:"syn_out,omitempty"`
	SynAckIn       uint64 `json:"synack_in,omitempty"`
	RstIn          uint64 `json:"rst_in,omitempty"`
	ICMPClosedIn   uint64 `json:"icmp_closed_in,omitempty"`
	ICMPFilteredIn uint64 `json:"icmp_filtered_in,omitempty"`
}

// Add adds o to e.
func (e *Evidence) Add(o Evidence) {
	e.SynIn += o.SynIn
	e.SynAckOut += o.SynAckOut
	e.RstOut += o.RstOut
	e.ICMPClosedOut += o.ICMPClosedOut
	e.ICMPFilteredOut += o.ICMPFilteredOut
	e.SynOut += o.SynOut
	e.SynAckIn += o.SynAckIn
	e.RstIn += o.RstIn
	e.ICMPClosedIn += o.ICMPClosedIn
	e.ICMPFilteredIn += o.ICMPFilteredIn
}

// Flow is the traffic of one (interface, direction, protocol, service port,
// peer) key over the snapshot window.
type Flow struct {
	Interface string    `json:"iface"`
	Direction Direction `json:"direction"`
	// DirectionInferred is set when neither socket state nor a handshake
	// told the direction and the port heuristic (well-known vs ephemeral)
	// decided.
	DirectionInferred bool  `json:"direction_inferred,omitempty"`
	Proto             Proto `json:"proto"`
	// Port is the service port for TCP/UDP/SCTP, type<<8|code for ICMP and
	// ICMPv6, and 0 for other protocols and non-first fragments.
	Port uint16 `json:"port"`
	// Fragment marks non-first IP fragments, which carry no L4 header.
	Fragment bool `json:"fragment,omitempty"`
	// Peer is the remote address. It is absent (the zero Addr) in a folded
	// entry, which has PeerPrefix instead, and in Snapshot.Overflow entries,
	// whose peers are unknown.
	Peer netip.Addr `json:"peer,omitzero"`
	// PeerPrefix is set on a folded entry: the traffic of every peer of
	// this service inside the prefix (a /24 or /48, or /0: "other peers"),
	// merged because the recorder's memory budget was reached.
	PeerPrefix netip.Prefix `json:"peer_prefix,omitzero"`
	// Peers estimates the distinct peer addresses a folded or overflow
	// entry stands for (from PeerSketch); 0 for an ordinary flow (one peer).
	Peers uint64 `json:"peers,omitempty"`
	// PeerSketch is the HyperLogLog sketch of those addresses (folded and
	// overflow entries only), so entries can be merged without losing the
	// distinct count.
	PeerSketch *PeerSketch `json:"peer_sketch,omitempty"`

	PacketsIn  uint64    `json:"packets_in"`
	BytesIn    uint64    `json:"bytes_in"`
	PacketsOut uint64    `json:"packets_out"`
	BytesOut   uint64    `json:"bytes_out"`
	FirstSeen  time.Time `json:"first_seen"`
	LastSeen   time.Time `json:"last_seen"`
	Evidence   Evidence  `json:"evidence"`
}

// Folded reports whether f merges the peers of a prefix (PeerPrefix).
func (f *Flow) Folded() bool { return f.PeerPrefix.IsValid() }

// Packets returns the packets seen in both directions.
func (f *Flow) Packets() uint64 { return f.PacketsIn + f.PacketsOut }

// Bytes returns the bytes seen in both directions.
func (f *Flow) Bytes() uint64 { return f.BytesIn + f.BytesOut }

// Interface describes one interface the programs were attached to.
type Interface struct {
	Name  string `json:"name"`
	Index int    `json:"index"`
	// Ingress is the ingress attach mode: "xdp-native", "xdp-generic" or
	// "tc"; Egress is "tcx" or "clsact". Empty for replayed captures.
	Ingress   string       `json:"ingress,omitempty"`
	Egress    string       `json:"egress,omitempty"`
	Addresses []netip.Addr `json:"addresses,omitempty"`
}

// Socket is a local listening TCP socket or bound UDP socket seen via
// sock_diag during the window.
type Socket struct {
	Proto Proto      `json:"proto"`
	Addr  netip.Addr `json:"addr"`
	Port  uint16     `json:"port"`
}

// Stats are the datapath's own counters. Any non-zero loss counter means
// the snapshot is incomplete, and every report says so.
type Stats struct {
	// FlowCapacity is the max_entries of the kernel flow map; FlowEntries
	// the most entries it held between two moves (its high-water mark: a
	// recorder moves the counts out of the kernel periodically).
	FlowCapacity uint32 `json:"flow_capacity"`
	FlowEntries  uint32 `json:"flow_entries"`
	// FlowInsertFailed counts packets whose per-peer flow could not be
	// inserted because the flow map was full. They lost their peer
	// identity but were still counted per service in Snapshot.Overflow,
	// unless OverflowInsertFailed counts them too.
	FlowInsertFailed uint64 `json:"flow_insert_failed"`
	// OverflowCapacity is the max_entries of the per-service overflow map;
	// OverflowInsertFailed counts packets not counted at all because that
	// map was full as well: the only packets really lost.
	OverflowCapacity     uint32 `json:"overflow_capacity,omitempty"`
	OverflowInsertFailed uint64 `json:"overflow_insert_failed"`
	// Moves counts how often the recorder moved the counts out of the
	// kernel maps into its own memory.
	Moves uint64 `json:"moves,omitempty"`
	// FlowBudget is the recorder's memory budget in flow entries; beyond
	// it, the peers of the services with most peers were folded into
	// prefixes and then into one "other peers" entry per service.
	// FoldedFlows counts the per-peer entries folded that way.
	FlowBudget  uint64 `json:"flow_budget,omitempty"`
	FoldedFlows uint64 `json:"folded_flows,omitempty"`
	// FlowEvictions counts flows the kernel evicted (LRU maps only).
	FlowEvictions uint64 `json:"flow_evictions"`
	// ConnInsertFailed counts connection-orientation entries that could not
	// be stored; affected packets fall back to the port heuristic.
	ConnInsertFailed uint64 `json:"conn_insert_failed"`
	// Packets seen, per hook.
	PacketsIngress uint64 `json:"packets_ingress"`
	PacketsEgress  uint64 `json:"packets_egress"`
	// Truncated counts packets whose headers ended early (counted under the
	// deepest protocol that could be read).
	Truncated uint64 `json:"truncated"`
	// NonIP counts non-IP frames per ethertype (hex key, e.g. "0x0806").
	NonIP map[string]Counter `json:"non_ip,omitempty"`
}

// Counter is a packet and byte count.
type Counter struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Lossy reports whether any packet went uncounted: the overflow map was
// full too, or an LRU map evicted flows.
func (s *Stats) Lossy() bool {
	return s.OverflowInsertFailed > 0 || s.FlowEvictions > 0
}

// PeersLost reports whether some packets were counted without their peer
// (per service, in Snapshot.Overflow) or with their peer folded into a
// prefix: peer and zone checks cannot cover them.
func (s *Stats) PeersLost() bool { return s.FlowInsertFailed > 0 || s.FoldedFlows > 0 }

// Overflowed reports whether the kernel flow map was full at some point.
func (s *Stats) Overflowed() bool {
	return s.FlowInsertFailed > 0 || s.OverflowInsertFailed > 0 || s.FlowEvictions > 0
}

// Interruption records that a recording stopped before its planned end.
type Interruption struct {
	// Signal is the signal's name ("SIGINT", "SIGTERM"), or "error" when
	// the recorder stopped on an error and saved what it had.
	Signal string `json:"signal"`
	// At is when the recording stopped; PlannedEnd when it was to end.
	At         time.Time `json:"at"`
	PlannedEnd time.Time `json:"planned_end,omitzero"`
	// Reason is a human explanation (the error, for Signal "error").
	Reason string `json:"reason,omitempty"`
}

// Snapshot is the content of a snapshot file.
type Snapshot struct {
	Version int `json:"version"`
	Tool    struct {
		Name    string `json:"name"`
		Version string `json:"version"`
	} `json:"tool"`
	Hostname string `json:"hostname,omitempty"`
	Kernel   string `json:"kernel,omitempty"`
	// Source is "live" for a recording or "replay:<file>" for a capture.
	Source     string      `json:"source"`
	Interfaces []Interface `json:"interfaces"`
	Start      time.Time   `json:"start"`
	End        time.Time   `json:"end"`
	// EphemeralPorts is the local ephemeral port range used by the
	// direction heuristic (net.ipv4.ip_local_port_range).
	EphemeralPorts [2]uint16 `json:"ephemeral_ports"`
	Listening      []Socket  `json:"listening,omitempty"`
	// Checkpoint marks a snapshot written while the recording was still
	// running (record --checkpoint): if it is the last one, the recorder
	// did not finish (killed, crashed, power lost).
	Checkpoint bool `json:"checkpoint,omitempty"`
	// Interrupted is set when the recording stopped before its planned
	// end (a signal, or an error after which what was recorded was kept).
	Interrupted *Interruption `json:"interrupted,omitempty"`
	Stats       Stats         `json:"stats"`
	Flows       []Flow        `json:"flows"`
	// Overflow holds the packets whose per-peer flow could not be stored
	// because the kernel flow map was full, counted per (interface,
	// direction, protocol, service port) without the peer. They carry
	// their handshake evidence and a sketch of their distinct peers.
	Overflow []Flow `json:"overflow,omitempty"`
	// DNS holds the names learned from the DNS answers this host
	// received (passive DNS, dns.go); nil when the recorder had none.
	DNS *DNS `json:"dns,omitempty"`

	// Unknown lists the fields of the file this build does not know, as
	// paths ("flows[].new_counter"), sorted, each once: a newer writer's
	// additions, which do not change the meaning of the known fields
	// (docs/SNAPSHOT.md, Compatibility) and are ignored. Never written.
	Unknown []string `json:"-"`
}

// Window returns the length of the observation window.
func (s *Snapshot) Window() time.Duration { return s.End.Sub(s.Start) }

// LocalAddrs returns the addresses of all recorded interfaces, sorted.
func (s *Snapshot) LocalAddrs() []netip.Addr {
	var out []netip.Addr
	for _, i := range s.Interfaces {
		out = append(out, i.Addresses...)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Less(out[b]) })
	return out
}

// Sort orders flows deterministically: interface, direction, protocol,
// port, peer.
func (s *Snapshot) Sort() {
	SortFlows(s.Flows)
	SortFlows(s.Overflow)
	SortSockets(s.Listening)
	if s.DNS != nil {
		s.DNS.Sort()
	}
}

// SortSockets orders sockets by protocol, port and address.
func SortSockets(socks []Socket) {
	sort.Slice(socks, func(i, j int) bool {
		a, b := socks[i], socks[j]
		if a.Proto != b.Proto {
			return a.Proto < b.Proto
		}
		if a.Port != b.Port {
			return a.Port < b.Port
		}
		return a.Addr.Less(b.Addr)
	})
}

// SortFlows orders flows deterministically (see Snapshot.Sort). It sorts
// small packed keys and then moves every flow once, rather than swapping
// 256-byte flows through a comparison sort (a million flows: 5× faster);
// flows with an IPv6 zone on their peer take the plain sort.
func SortFlows(flows []Flow) {
	if len(flows) < 64 || !sortByKeys(flows) {
		sortFlowsPlain(flows)
	}
}

func sortFlowsPlain(flows []Flow) {
	sort.Slice(flows, func(i, j int) bool { return flowLess(&flows[i], &flows[j]) })
}

// flowKey packs flowLess's order: w holds the interface's rank,
// direction, protocol, port, fragment, inferred, folded and the address
// family; then the address, then the prefix length.
type flowKey struct {
	w, hi, lo uint64
	bits      int32
	idx       int32
}

// Orderer gives flows their place in SortFlows' order without moving
// them, for a caller that builds flows from something else (the
// collector's entries): it sorts OrderKeys, then fills each place once.
type Orderer struct{ rank map[string]uint64 }

// NewOrderer returns an Orderer for flows on the given interfaces (in any
// order, each once); nil if there are too many to rank.
func NewOrderer(ifaces []string) *Orderer {
	if len(ifaces) > 1<<16 {
		return nil
	}
	names := slices.Clone(ifaces)
	sort.Strings(names)
	rank := make(map[string]uint64, len(names))
	for i, n := range names {
		rank[n] = uint64(i)
	}
	return &Orderer{rank: rank}
}

// OrderKey is a flow's place in SortFlows' order, and the position it was
// given (Index).
type OrderKey struct{ k flowKey }

// Index is the position passed to Key.
func (k OrderKey) Index() int { return int(k.k.idx) }

// Key returns f's sort key, remembering position i. ok is false when the
// key cannot tell f's place: a peer with an IPv6 zone, an interface not
// given to NewOrderer, or i beyond 2^31.
func (o *Orderer) Key(f *Flow, i int) (key OrderKey, ok bool) {
	if _, known := o.rank[f.Interface]; !known || f.Peer.Zone() != "" || i < 0 || i >= 1<<31 {
		return OrderKey{}, false
	}
	return OrderKey{o.key(f, i)}, true
}

func (o *Orderer) key(f *Flow, i int) flowKey {
	b2u := func(b bool) uint64 {
		if b {
			return 1
		}
		return 0
	}
	a, bits := f.Peer, int32(0)
	if f.Folded() {
		a, bits = f.PeerPrefix.Addr(), int32(f.PeerPrefix.Bits())
	}
	var fam uint64
	switch a.BitLen() {
	case 32:
		fam = 1
	case 128:
		fam = 2
	}
	b := a.As16()
	return flowKey{
		w: o.rank[f.Interface]<<48 | uint64(f.Direction)<<40 | uint64(f.Proto)<<32 | uint64(f.Port)<<16 |
			b2u(f.Fragment)<<4 | b2u(f.DirectionInferred)<<3 | b2u(f.Folded())<<2 | fam,
		hi:   binary.BigEndian.Uint64(b[:8]),
		lo:   binary.BigEndian.Uint64(b[8:]),
		bits: bits, idx: int32(i),
	}
}

func compareKeys(x, y flowKey) int {
	if c := cmp.Compare(x.w, y.w); c != 0 {
		return c
	}
	if c := cmp.Compare(x.hi, y.hi); c != 0 {
		return c
	}
	if c := cmp.Compare(x.lo, y.lo); c != 0 {
		return c
	}
	return cmp.Compare(x.bits, y.bits)
}

// SortKeys sorts keys into SortFlows' order; keys that compare equal keep
// the order of their positions (Index). Keys given in the order of their
// positions (as Orderer.Key numbers them) take a radix sort (radix.go);
// otherwise, or when too many digits vary, a large slice is sorted in two
// halves on two goroutines, then merged.
func SortKeys(keys []OrderKey) {
	byPos := func(x, y OrderKey) int {
		if c := compareKeys(x.k, y.k); c != 0 {
			return c
		}
		return cmp.Compare(x.k.idx, y.k.idx)
	}
	inOrder := true
	for i := 1; i < len(keys) && inOrder; i++ {
		inOrder = keys[i-1].k.idx < keys[i].k.idx
	}
	// OrderKey is a flowKey: the radix sort works on the same memory.
	if inOrder && radixSort(unsafe.Slice((*flowKey)(unsafe.Pointer(unsafe.SliceData(keys))), len(keys))) {
		return
	}
	if len(keys) < 1<<16 {
		slices.SortFunc(keys, byPos)
		return
	}
	half := len(keys) / 2
	lo, hi := keys[:half], keys[half:]
	done := make(chan struct{})
	go func() {
		slices.SortFunc(hi, byPos)
		close(done)
	}()
	slices.SortFunc(lo, byPos)
	<-done
	merged := hugemem.Make[OrderKey](len(keys))
	i, j := 0, 0
	for i < len(lo) && j < len(hi) {
		if byPos(hi[j], lo[i]) < 0 {
			merged = append(merged, hi[j])
			j++
		} else {
			merged = append(merged, lo[i])
			i++
		}
	}
	merged = append(append(merged, lo[i:]...), hi[j:]...)
	copy(keys, merged)
}

func sortByKeys(flows []Flow) bool {
	if len(flows) >= 1<<31 {
		return false
	}
	var names []string
	seen := map[string]bool{}
	for i := range flows {
		if n := flows[i].Interface; !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
		if flows[i].Peer.Zone() != "" {
			return false
		}
	}
	o := NewOrderer(names)
	if o == nil {
		return false
	}
	keys := make([]flowKey, len(flows))
	for i := range flows {
		keys[i] = o.key(&flows[i], i)
	}
	if !radixSort(keys) {
		slices.SortFunc(keys, compareKeys)
	}
	// Position i takes flows[keys[i].idx]: follow each cycle once.
	for i := range keys {
		if keys[i].idx < 0 || int(keys[i].idx) == i {
			continue
		}
		tmp := flows[i]
		j := i
		for {
			src := int(keys[j].idx)
			keys[j].idx = -1
			if src == i {
				flows[j] = tmp
				break
			}
			flows[j] = flows[src]
			j = src
		}
	}
	return true
}

func flowLess(a, b *Flow) bool {
	if a.Interface != b.Interface {
		return a.Interface < b.Interface
	}
	if a.Direction != b.Direction {
		return a.Direction < b.Direction
	}
	if a.Proto != b.Proto {
		return a.Proto < b.Proto
	}
	if a.Port != b.Port {
		return a.Port < b.Port
	}
	if a.Fragment != b.Fragment {
		return !a.Fragment
	}
	if a.DirectionInferred != b.DirectionInferred {
		return !a.DirectionInferred
	}
	if a.Folded() != b.Folded() {
		return !a.Folded() // exact peers first, then folded prefixes
	}
	if a.Folded() {
		if c := a.PeerPrefix.Addr().Compare(b.PeerPrefix.Addr()); c != 0 {
			return c < 0
		}
		return a.PeerPrefix.Bits() < b.PeerPrefix.Bits()
	}
	return a.Peer.Less(b.Peer)
}

// Validate checks the invariants a reader relies on.
func (s *Snapshot) Validate() error {
	switch {
	case s.Version > FormatVersion:
		return newerVersion(s.Version)
	case s.Version != FormatVersion:
		return fmt.Errorf("%w: version %d, this build reads versions 1 to %d", ErrFormat, s.Version, FormatVersion)
	}
	if !s.End.IsZero() && s.End.Before(s.Start) {
		return fmt.Errorf("%w: window end %s before start %s", ErrFormat, s.End.Format(time.RFC3339), s.Start.Format(time.RFC3339))
	}
	if s.Interrupted != nil && s.Interrupted.Signal == "" {
		return fmt.Errorf("%w: interrupted: missing signal", ErrFormat)
	}
	for i := range s.Flows {
		f := &s.Flows[i]
		switch {
		case f.Peer.IsValid() && f.PeerPrefix.IsValid():
			return fmt.Errorf("%w: flows[%d]: both peer and peer_prefix", ErrFormat, i)
		case !f.Peer.IsValid() && !f.PeerPrefix.IsValid():
			return fmt.Errorf("%w: flows[%d]: missing peer address", ErrFormat, i)
		case f.PeerPrefix.IsValid() && f.PeerPrefix != f.PeerPrefix.Masked():
			return fmt.Errorf("%w: flows[%d]: peer_prefix %s has host bits set", ErrFormat, i, f.PeerPrefix)
		}
		if err := f.validate(); err != nil {
			return fmt.Errorf("%w: flows[%d]: %v", ErrFormat, i, err)
		}
	}
	if s.DNS != nil {
		if err := s.DNS.validate(); err != nil {
			return fmt.Errorf("%w: %v", ErrFormat, err)
		}
	}
	for i := range s.Overflow {
		f := &s.Overflow[i]
		if f.Peer.IsValid() || f.PeerPrefix.IsValid() {
			return fmt.Errorf("%w: overflow[%d]: an overflow entry has no peer", ErrFormat, i)
		}
		if err := f.validate(); err != nil {
			return fmt.Errorf("%w: overflow[%d]: %v", ErrFormat, i, err)
		}
	}
	return nil
}

func (f *Flow) validate() error {
	if f.Direction > Outbound {
		return fmt.Errorf("invalid direction %d", f.Direction)
	}
	if f.Port != 0 && !f.Proto.HasPorts() && !f.Proto.IsICMP() {
		return fmt.Errorf("protocol %s carries no port but port is %d", f.Proto, f.Port)
	}
	return nil
}

// upgradeV1 turns a version 1 snapshot into the current version. Version 1
// had no overflow map: its flow_insert_failed packets were not counted at
// all, which version 2 calls overflow_insert_failed.
func (s *Snapshot) upgradeV1() {
	s.Version = FormatVersion
	s.Stats.OverflowInsertFailed = s.Stats.FlowInsertFailed
}

// Read parses and validates a snapshot in either encoding (compact or
// JSON, told apart by the compact magic). name is used in error messages.
// Fields this build does not know are ignored and listed in Unknown; a
// version newer than FormatVersion (or a compact container newer than
// CompactVersion) is refused with ErrNewerVersion.
func Read(r io.Reader, name string) (*Snapshot, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	head, _ := br.Peek(len(compactMagic))
	if IsCompact(head) {
		s, err := readCompact(br, name)
		if err != nil {
			return nil, err
		}
		if err := s.Validate(); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		return s, nil
	}
	data, err := io.ReadAll(br)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	s, unknown, err := decodeJSONSnapshot(data, name)
	if err != nil {
		return nil, err
	}
	if s.Version == 1 {
		for i := range s.Flows {
			if s.Flows[i].PeerPrefix.IsValid() || s.Flows[i].PeerSketch != nil || s.Flows[i].Peers != 0 {
				return nil, fmt.Errorf("%s: %w: flows[%d]: peer_prefix, peers and peer_sketch need version 2", name, ErrFormat, i)
			}
		}
		if len(s.Overflow) > 0 || s.Interrupted != nil || s.Checkpoint {
			return nil, fmt.Errorf("%s: %w: overflow, interrupted and checkpoint need version 2", name, ErrFormat)
		}
		s.upgradeV1()
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	s.Unknown = unknown
	return s, nil
}

// decodeJSONSnapshot decodes a JSON snapshot object (a JSON file, or the
// header of a compact one) and lists the fields this build does not know.
// It neither upgrades nor validates.
func decodeJSONSnapshot(data []byte, name string) (*Snapshot, []string, error) {
	s, err := decode(data, true)
	var unknown []string
	if err != nil {
		// A newer writer may have changed what a field holds: its file is
		// not malformed, and must not be judged by this build's types.
		var probe struct {
			Version int `json:"version"`
		}
		if json.Unmarshal(data, &probe) == nil && probe.Version > FormatVersion {
			return nil, nil, fmt.Errorf("%s: %w", name, newerVersion(probe.Version))
		}
		if isUnknownField(err) {
			// A field this build does not know: read again without the
			// check (any other error still shows), and list them all.
			if s, err = decode(data, false); err == nil {
				unknown = unknownFields(data)
			}
		}
	}
	if err != nil {
		if errors.Is(err, errTrailing) {
			return nil, nil, fmt.Errorf("%s: %w: trailing data after the snapshot object", name, ErrFormat)
		}
		return nil, nil, fmt.Errorf("%s: %w: %s", name, ErrFormat, err)
	}
	return s, unknown, nil
}

var errTrailing = errors.New("trailing data")

func newerVersion(v int) error {
	return fmt.Errorf("%w (version %d); this build reads versions 1 to %d: upgrade flowaudit to read it", ErrNewerVersion, v, FormatVersion)
}

// decode parses data into a Snapshot; strict refuses unknown fields. A
// decoding error is described with its line and column.
func decode(data []byte, strict bool) (*Snapshot, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if strict {
		dec.DisallowUnknownFields()
	}
	var s Snapshot
	if err := dec.Decode(&s); err != nil {
		if strict && isUnknownField(err) {
			return nil, err
		}
		return nil, errors.New(describeJSONError(data, dec, err))
	}
	if dec.More() {
		return nil, errTrailing
	}
	return &s, nil
}

// isUnknownField: encoding/json's error for a field DisallowUnknownFields
// refuses (it has no error type of its own).
func isUnknownField(err error) bool { return strings.HasPrefix(err.Error(), "json: unknown field ") }

// unknownFields lists the object keys of data that no field of Snapshot
// takes, as paths: "flowz", "flows[].new_counter", "stats.non_ip[].x".
// Keys match fields case-insensitively, as encoding/json matches them.
func unknownFields(data []byte) []string {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) != nil {
		return nil
	}
	found := map[string]bool{}
	walkUnknown(v, reflect.TypeFor[Snapshot](), "", found)
	out := make([]string, 0, len(found))
	for p := range found {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

var (
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

func walkUnknown(v any, t reflect.Type, path string, found map[string]bool) {
	if t.Implements(jsonUnmarshaler) || reflect.PointerTo(t).Implements(jsonUnmarshaler) ||
		t.Implements(textUnmarshaler) || reflect.PointerTo(t).Implements(textUnmarshaler) {
		return // a value with its own syntax (an address, a time, a sketch)
	}
	switch t.Kind() {
	case reflect.Pointer:
		walkUnknown(v, t.Elem(), path, found)
	case reflect.Slice, reflect.Array:
		if list, ok := v.([]any); ok {
			for _, e := range list {
				walkUnknown(e, t.Elem(), path+"[]", found)
			}
		}
	case reflect.Map:
		if m, ok := v.(map[string]any); ok {
			for _, e := range m {
				walkUnknown(e, t.Elem(), path+"[]", found)
			}
		}
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			return
		}
		for key, e := range m {
			f, ok := jsonField(t, key)
			name := key
			if path != "" {
				name = path + "." + key
			}
			if !ok {
				found[name] = true
				continue
			}
			walkUnknown(e, f.Type, name, found)
		}
	}
}

// jsonField is the field of struct type t that encoding/json decodes key
// into: the exact name first, then a case-insensitive match.
func jsonField(t reflect.Type, key string) (reflect.StructField, bool) {
	var fold reflect.StructField
	folded := false
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = f.Name
		}
		if name == key {
			return f, true
		}
		if !folded && strings.EqualFold(name, key) {
			fold, folded = f, true
		}
	}
	return fold, folded
}

// ReadFile reads and validates the snapshot at path.
func ReadFile(path string) (*Snapshot, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open snapshot: %w", err)
	}
	defer f.Close()
	return Read(f, path)
}

// describeJSONError turns a decoding error into "line L, column C: …".
// Errors from a value's own parser (a bad address, protocol or direction)
// carry no offset, so the element holding it is located by a second pass.
func describeJSONError(data []byte, dec *json.Decoder, err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		line, col := LineCol(data, se.Offset)
		return fmt.Sprintf("line %d, column %d: %v", line, col, err)
	case errors.As(err, &te):
		line, col := LineCol(data, te.Offset)
		return fmt.Sprintf("line %d, column %d: %v", line, col, err)
	}
	if where := locateValueError(data); where != "" {
		return where + ": " + err.Error()
	}
	line, col := LineCol(data, dec.InputOffset())
	return fmt.Sprintf("line %d, column %d: %v", line, col, err)
}

// locateValueError decodes the top-level keys one by one, and the elements
// of the array-valued ones one by one, and returns where the first one
// fails: "line L, column C (flows[3])".
func locateValueError(data []byte) string {
	dec := json.NewDecoder(bytes.NewReader(data))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return ""
	}
	elem := map[string]func() any{
		"flows":      func() any { return new(Flow) },
		"overflow":   func() any { return new(Flow) },
		"listening":  func() any { return new(Socket) },
		"interfaces": func() any { return new(Interface) },
	}
	var probe Snapshot
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return ""
		}
		key, _ := kt.(string)
		at := func(off int64, what string) string {
			off += int64(len(data[off:]) - len(bytes.TrimLeft(data[off:], " \t\r\n:,")))
			line, col := LineCol(data, off)
			return fmt.Sprintf("line %d, column %d (%s)", line, col, what)
		}
		start := dec.InputOffset()
		if mk, ok := elem[key]; ok {
			if t, err := dec.Token(); err != nil || t != json.Delim('[') {
				return at(start, key)
			}
			for i := 0; dec.More(); i++ {
				off := dec.InputOffset()
				if err := dec.Decode(mk()); err != nil {
					return at(off, fmt.Sprintf("%s[%d]", key, i))
				}
			}
			if _, err := dec.Token(); err != nil {
				return ""
			}
			continue
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return at(start, key)
		}
		one, _ := json.Marshal(map[string]json.RawMessage{key: raw})
		if err := json.Unmarshal(one, &probe); err != nil {
			return at(start, key)
		}
	}
	return ""
}

// LineCol converts a byte offset in data to a 1-based line and column.
func LineCol(data []byte, off int64) (line, col int) {
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	line = 1 + bytes.Count(data[:off], []byte("\n"))
	col = int(off) - bytes.LastIndexByte(data[:off], '\n')
	return line, col
}

// Write encodes s as indented JSON. It never fails on a time value: one
// JSON cannot carry is written as JSONTime gives it (s is not changed).
func Write(w io.Writer, s *Snapshot) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(writable(s))
}

// WriteFile writes s to path atomically: a temporary file in the same
// directory is written, synced and renamed over path, so a reader never
// sees a partial snapshot and an existing file survives a failed write.
// The encoding follows the name (EncodingFor): JSON for "*.json", the
// compact encoding otherwise.
func WriteFile(path string, s *Snapshot) error {
	return WriteFileAs(path, s, EncodingFor(path))
}

// WriteFileAs writes s to path atomically in the given encoding.
func WriteFileAs(path string, s *Snapshot, e Encoding) error {
	return AtomicWrite(path, func(w io.Writer) error {
		if e == JSON {
			return Write(w, s)
		}
		bw := bufio.NewWriterSize(w, 256<<10)
		if err := WriteCompact(bw, s); err != nil {
			return err
		}
		return bw.Flush()
	})
}

// AtomicWrite writes a file through fn with temp file + fsync + rename.
// Reports and rule files use it too.
func AtomicWrite(path string, fn func(io.Writer) error) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err = fn(tmp); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
