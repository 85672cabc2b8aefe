package bpf

import (
	"fmt"
	"net/netip"
	"sort"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

// SnapshotOptions carry what the collector cannot know by itself.
type SnapshotOptions struct {
	ToolVersion string
	Start       time.Time // start of the observation window
	End         time.Time // zero: now
	Listening   []snapshot.Socket
	// Sockets, if set, gives the listening sockets instead of Listening:
	// those seen during the window read.
	Sockets *SocketRefresher
	Source  string // default "live"
}

// Snapshot reads the maps and returns a complete, sorted snapshot with the
// attached interfaces and their addresses.
func (c *Collector) Snapshot(o SnapshotOptions) (*snapshot.Snapshot, error) {
	r, err := c.ReadMaps()
	if err != nil {
		return nil, err
	}
	if o.End.IsZero() {
		o.End = time.Now()
	}
	if !r.Since.IsZero() && r.Since.After(o.Start) {
		o.Start = r.Since // a sliding window
	}
	if o.Sockets != nil {
		o.Listening = o.Sockets.SeenSince(o.Start)
	}
	if o.Source == "" {
		o.Source = "live"
	}
	s := &snapshot.Snapshot{
		Version:        snapshot.FormatVersion,
		Source:         o.Source,
		Start:          o.Start.UTC(),
		End:            o.End.UTC(),
		EphemeralPorts: c.ephemeral,
		Listening:      o.Listening,
		Stats:          r.Stats,
		Flows:          r.Flows,
		Overflow:       r.Overflow,
	}
	if s.DNS, err = c.DNS(); err != nil {
		return nil, err
	}
	s.Tool.Name = "flowaudit"
	s.Tool.Version = o.ToolVersion
	s.Hostname, s.Kernel = hostInfo()
	for _, a := range c.Attachments() {
		addrs, err := c.interfaceAddrs(a.Index)
		if err != nil {
			return nil, err
		}
		s.Interfaces = append(s.Interfaces, snapshot.Interface{
			Name: a.Iface, Index: a.Index, Ingress: a.Ingress, Egress: a.Egress, Addresses: addrs,
		})
	}
	sort.Slice(s.Interfaces, func(i, j int) bool { return s.Interfaces[i].Name < s.Interfaces[j].Name })
	// ReadMaps returned the flows sorted; only the sockets need it.
	snapshot.SortSockets(s.Listening)
	return s, nil
}

func (c *Collector) interfaceAddrs(index int) ([]netip.Addr, error) {
	l, err := c.nl.LinkByIndex(index)
	if err != nil {
		return nil, fmt.Errorf("interface %d: %w", index, err)
	}
	list, err := c.nl.AddrList(l, unix.AF_UNSPEC)
	if err != nil {
		return nil, fmt.Errorf("addresses of %s: %w", l.Attrs().Name, err)
	}
	var out []netip.Addr
	for _, a := range list {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Less(out[j]) })
	return out, nil
}
