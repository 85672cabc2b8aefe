package snapshot

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
)

// The compact encoding (docs/SNAPSHOT.md, "Compact encoding"): the same
// snapshot (format version 2) as the JSON file, framed for size and speed.
//
//	magic "\x89FASNAP\n", uvarint container version, then one zstd stream of
//	  'H' uvarint n, n bytes: the JSON object of everything but flows/overflow
//	  'F' flow list (the flows), 'O' flow list (overflow entries)
//	  'Z' end
//
// A flow list is uvarint count, uvarint names, each name as uvarint length
// + bytes (the interfaces the entries refer to by index), then blocks of
// uvarint records, uvarint bytes, the records' bytes, until count records
// were read.

// CompactVersion is the version of the compact container written by this
// build; a reader refuses a higher one with ErrNewerVersion.
const CompactVersion = 1

// compactMagic opens a compact snapshot file. Its first byte is not
// ASCII, so no JSON (or text) file begins with it.
var compactMagic = []byte("\x89FASNAP\n")

// Encoding is a snapshot file's encoding.
type Encoding int

const (
	// Compact is the binary, zstd-compressed encoding (the default).
	Compact Encoding = iota
	// JSON is the single JSON object of docs/SNAPSHOT.md.
	JSON
)

// EncodingFor is the encoding WriteFile uses for path: JSON for a name
// ending in ".json" (case-insensitive), Compact for any other.
func EncodingFor(path string) Encoding {
	if strings.EqualFold(filepath.Ext(path), ".json") {
		return JSON
	}
	return Compact
}

// IsCompact reports whether data (a file's first bytes) opens a compact
// snapshot.
func IsCompact(head []byte) bool { return bytes.HasPrefix(head, compactMagic) }

// record flags.
const (
	cfInferred = 1 << iota
	cfFragment
	cfPeer
	cfPrefix
	cfSketch
	cfFirst // FirstSeen is not the zero time
	cfLast  // LastSeen is not the zero time
	cfZone  // Peer has an IPv6 zone
)

// blockTarget is the size from which a block of records is flushed.
const blockTarget = 64 << 10

// WriteCompact writes s in the compact encoding.
func WriteCompact(w io.Writer, s *Snapshot) error {
	if _, err := w.Write(compactMagic); err != nil {
		return err
	}
	if _, err := w.Write(binary.AppendUvarint(nil, CompactVersion)); err != nil {
		return err
	}
	zw, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(1<<20), zstd.WithLowerEncoderMem(true))
	if err != nil {
		return err
	}
	h := compactHeader(s)
	hj, err := json.Marshal(h)
	if err != nil {
		zw.Close()
		return err
	}
	buf := make([]byte, 0, blockTarget+4096)
	buf = append(buf, 'H')
	buf = binary.AppendUvarint(buf, uint64(len(hj)))
	if _, err := zw.Write(buf); err != nil {
		zw.Close()
		return err
	}
	if _, err := zw.Write(hj); err != nil {
		zw.Close()
		return err
	}
	base := h.Start.Unix()
	for _, sec := range []struct {
		tag   byte
		flows []Flow
	}{{'F', s.Flows}, {'O', s.Overflow}} {
		if len(sec.flows) == 0 {
			continue // read back as nil, like an absent JSON list
		}
		if err := writeFlows(zw, buf[:0], sec.tag, sec.flows, base); err != nil {
			zw.Close()
			return err
		}
	}
	if _, err := zw.Write([]byte{'Z'}); err != nil {
		zw.Close()
		return err
	}
	return zw.Close()
}

// compactHeader is s without its flows, with the times JSON cannot carry
// moved to the nearest it can (as Write does).
func compactHeader(s *Snapshot) *Snapshot {
	h := *s
	h.Flows, h.Overflow, h.Unknown = nil, nil, nil
	h.Start, h.End = JSONTime(s.Start), JSONTime(s.End)
	if s.Interrupted != nil {
		in := *s.Interrupted
		in.At, in.PlannedEnd = JSONTime(in.At), JSONTime(in.PlannedEnd)
		h.Interrupted = &in
	}
	return &h
}

func writeFlows(w io.Writer, buf []byte, tag byte, flows []Flow, base int64) error {
	names := map[string]uint64{}
	var list []string
	for i := range flows {
		if i > 0 && flows[i].Interface == flows[i-1].Interface {
			continue
		}
		if _, ok := names[flows[i].Interface]; !ok {
			names[flows[i].Interface] = uint64(len(list))
			list = append(list, flows[i].Interface)
		}
	}
	buf = append(buf, tag)
	buf = binary.AppendUvarint(buf, uint64(len(flows)))
	buf = binary.AppendUvarint(buf, uint64(len(list)))
	for _, n := range list {
		buf = binary.AppendUvarint(buf, uint64(len(n)))
		buf = append(buf, n...)
	}
	if _, err := w.Write(buf); err != nil {
		return err
	}
	block := buf[:0]
	var head [2 * binary.MaxVarintLen64]byte
	flush := func(n int) error {
		if n == 0 {
			return nil
		}
		h := binary.AppendUvarint(head[:0], uint64(n))
		h = binary.AppendUvarint(h, uint64(len(block)))
		if _, err := w.Write(h); err != nil {
			return err
		}
		_, err := w.Write(block)
		block = block[:0]
		return err
	}
	n := 0
	// Sorted flows come in runs of one interface: look its number up once
	// per run, not by hashing the name for every flow.
	last, lastIdx := "", uint64(0)
	if len(list) > 0 {
		last = list[0]
	}
	for i := range flows {
		if name := flows[i].Interface; name != last {
			last, lastIdx = name, names[name]
		}
		block = appendFlow(block, &flows[i], lastIdx, base)
		n++
		if len(block) >= blockTarget {
			if err := flush(n); err != nil {
				return err
			}
			n = 0
		}
	}
	return flush(n)
}

func appendAddr(b []byte, a netip.Addr) []byte {
	if a.Is4() {
		v := a.As4()
		return append(append(b, 4), v[:]...)
	}
	v := a.As16()
	return append(append(b, 16), v[:]...)
}

func zigzag(v int64) uint64 { return uint64(v<<1) ^ uint64(v>>63) }

func unzigzag(u uint64) int64 { return int64(u>>1) ^ -int64(u&1) }

// appendTime writes t as seconds relative to base (wrapping, so any time
// round-trips) and nanoseconds.
func appendTime(b []byte, t time.Time, base int64) []byte {
	b = binary.AppendUvarint(b, zigzag(int64(uint64(t.Unix())-uint64(base))))
	return binary.AppendUvarint(b, uint64(t.Nanosecond()))
}

func appendFlow(b []byte, f *Flow, iface uint64, base int64) []byte {
	var fl byte
	if f.DirectionInferred {
		fl |= cfInferred
	}
	if f.Fragment {
		fl |= cfFragment
	}
	if f.Peer.IsValid() {
		fl |= cfPeer
		if f.Peer.Zone() != "" {
			fl |= cfZone
		}
	}
	if f.PeerPrefix.IsValid() {
		fl |= cfPrefix
	}
	if f.PeerSketch != nil {
		fl |= cfSketch
	}
	if !f.FirstSeen.IsZero() {
		fl |= cfFirst
	}
	if !f.LastSeen.IsZero() {
		fl |= cfLast
	}
	b = append(b, fl, byte(f.Direction), byte(f.Proto))
	b = binary.AppendUvarint(b, iface)
	b = binary.AppendUvarint(b, uint64(f.Port))
	if fl&cfPeer != 0 {
		b = appendAddr(b, f.Peer)
		if fl&cfZone != 0 {
			z := f.Peer.Zone()
			b = binary.AppendUvarint(b, uint64(len(z)))
			b = append(b, z...)
		}
	}
	if fl&cfPrefix != 0 {
		b = appendAddr(b, f.PeerPrefix.Addr())
		b = append(b, byte(f.PeerPrefix.Bits()))
	}
	b = binary.AppendUvarint(b, f.Peers)
	if fl&cfSketch != 0 {
		b = append(b, f.PeerSketch[:]...)
	}
	b = binary.AppendUvarint(b, f.PacketsIn)
	b = binary.AppendUvarint(b, f.BytesIn)
	b = binary.AppendUvarint(b, f.PacketsOut)
	b = binary.AppendUvarint(b, f.BytesOut)
	if fl&cfFirst != 0 {
		b = appendTime(b, f.FirstSeen, base)
	}
	if fl&cfLast != 0 {
		lb := base
		if fl&cfFirst != 0 {
			lb = f.FirstSeen.Unix()
		}
		b = appendTime(b, f.LastSeen, lb)
	}
	ev := evidenceCounters(&f.Evidence)
	var mask uint64
	for i, v := range ev {
		if *v != 0 {
			mask |= 1 << i
		}
	}
	b = binary.AppendUvarint(b, mask)
	for _, v := range ev {
		if *v != 0 {
			b = binary.AppendUvarint(b, *v)
		}
	}
	return b
}

// evidenceCounters lists e's counters in their encoding order.
func evidenceCounters(e *Evidence) [10]*uint64 {
	return [10]*uint64{&e.SynIn, &e.SynAckOut, &e.RstOut, &e.ICMPClosedOut, &e.ICMPFilteredOut,
		&e.SynOut, &e.SynAckIn, &e.RstIn, &e.ICMPClosedIn, &e.ICMPFilteredIn}
}

// preallocLimit caps the entries allocated before they are read: a
// corrupt count cannot make the reader allocate more up front.
var preallocLimit = 1 << 20

// growFactor: a full flow slice grows to growFactor times the entries it
// holds (all read), or to the count if that is less. So a corrupt count
// makes the reader allocate at most growFactor times what the file really
// holds. 4 rather than 2: a 10 M-flow list then grows 1 M → 4 M → 10 M,
// copying 5 M flows instead of 15 M (1+2+4+8), and its peak is 14 M flows
// instead of 18 M (the last growth holds the old and the new slice).
const growFactor = 4

// maxHeader bounds the JSON header of a compact file (1 GiB).
const maxHeader = 1 << 30

// compactReader reads the decompressed stream and knows where it is.
type compactReader struct {
	r    *bufio.Reader
	off  int64
	name string
}

var errCompactEOF = errors.New("unexpected end of data")

func (c *compactReader) byte() (byte, error) {
	b, err := c.r.ReadByte()
	if err != nil {
		return 0, c.ioErr(err)
	}
	c.off++
	return b, nil
}

func (c *compactReader) uvarint() (uint64, error) {
	start := c.off
	var v uint64
	for shift := uint(0); ; shift += 7 {
		b, err := c.byte()
		if err != nil {
			return 0, err
		}
		if shift == 63 && b > 1 {
			return 0, c.fail(start, "varint overflows 64 bits")
		}
		v |= uint64(b&0x7f) << shift
		if b < 0x80 {
			return v, nil
		}
	}
}

func (c *compactReader) bytes(n uint64) ([]byte, error) {
	if n > 1<<31 {
		return nil, c.fail(c.off, fmt.Sprintf("length %d too large", n))
	}
	b := make([]byte, 0, min(n, 1<<20))
	for uint64(len(b)) < n {
		chunk := min(n-uint64(len(b)), 1<<20)
		start := len(b)
		b = append(b, make([]byte, chunk)...)
		m, err := io.ReadFull(c.r, b[start:])
		c.off += int64(m)
		if err != nil {
			return nil, c.ioErr(err)
		}
	}
	return b, nil
}

func (c *compactReader) ioErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%s: %w: compact stream offset %d: %v (truncated file?)", c.name, ErrFormat, c.off, errCompactEOF)
	}
	return fmt.Errorf("%s: %w: compact stream offset %d: %v", c.name, ErrFormat, c.off, err)
}

func (c *compactReader) fail(off int64, msg string) error {
	return fmt.Errorf("%s: %w: compact stream offset %d: %s", c.name, ErrFormat, off, msg)
}

// readCompact reads a compact snapshot from r, positioned at its magic.
func readCompact(r *bufio.Reader, name string) (*Snapshot, error) {
	if _, err := r.Discard(len(compactMagic)); err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	ver, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: compact container version: %v", name, ErrFormat, err)
	}
	switch {
	case ver > CompactVersion:
		return nil, fmt.Errorf("%s: %w (compact container version %d); this build reads compact version %d: upgrade flowaudit to read it",
			name, ErrNewerVersion, ver, CompactVersion)
	case ver != CompactVersion:
		return nil, fmt.Errorf("%s: %w: compact container version %d", name, ErrFormat, ver)
	}
	zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxWindow(64<<20))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	defer zr.Close()
	c := &compactReader{r: bufio.NewReaderSize(zr, 256<<10), name: name}
	if tag, err := c.byte(); err != nil {
		return nil, err
	} else if tag != 'H' {
		return nil, c.fail(0, fmt.Sprintf("section %q where the header 'H' belongs", tag))
	}
	n, err := c.uvarint()
	if err != nil {
		return nil, err
	}
	if n > maxHeader {
		return nil, c.fail(1, fmt.Sprintf("header length %d too large", n))
	}
	hoff := c.off
	hj, err := c.bytes(n)
	if err != nil {
		return nil, err
	}
	s, unknown, err := decodeJSONSnapshot(hj, name+" (compact header at offset "+fmt.Sprint(hoff)+")")
	if err != nil {
		return nil, err
	}
	if s.Version > FormatVersion {
		return nil, fmt.Errorf("%s: %w", name, newerVersion(s.Version))
	}
	if s.Version != FormatVersion {
		return nil, fmt.Errorf("%s: %w: compact header: version %d, a compact file holds version %d", name, ErrFormat, s.Version, FormatVersion)
	}
	if s.Flows != nil || s.Overflow != nil {
		return nil, c.fail(hoff, "the header holds flows or overflow entries")
	}
	base := s.Start.Unix()
	seen := map[byte]bool{}
	for {
		off := c.off
		tag, err := c.byte()
		if err != nil {
			return nil, err
		}
		var dst *[]Flow
		what := ""
		switch tag {
		case 'Z':
			if _, err := c.r.ReadByte(); err != io.EOF {
				if err != nil {
					return nil, c.ioErr(err)
				}
				return nil, c.fail(c.off, "trailing data after the end section")
			}
			s.Unknown = unknown
			return s, nil
		case 'F':
			dst, what = &s.Flows, "flows"
		case 'O':
			dst, what = &s.Overflow, "overflow"
		default:
			return nil, c.fail(off, fmt.Sprintf("unknown section %q", tag))
		}
		if seen[tag] {
			return nil, c.fail(off, fmt.Sprintf("second %s section", what))
		}
		seen[tag] = true
		if *dst, err = c.flows(what, base); err != nil {
			return nil, err
		}
	}
}

// flows reads one flow list.
func (c *compactReader) flows(what string, base int64) ([]Flow, error) {
	count, err := c.uvarint()
	if err != nil {
		return nil, err
	}
	nn, err := c.uvarint()
	if err != nil {
		return nil, err
	}
	if nn > count || nn > 1<<16 {
		return nil, c.fail(c.off, fmt.Sprintf("%s: %d interface names for %d entries", what, nn, count))
	}
	names := make([]string, nn)
	for i := range names {
		l, err := c.uvarint()
		if err != nil {
			return nil, err
		}
		if l > 4096 {
			return nil, c.fail(c.off, fmt.Sprintf("%s: interface name of %d bytes", what, l))
		}
		b, err := c.bytes(l)
		if err != nil {
			return nil, err
		}
		names[i] = string(b)
	}
	if count == 0 {
		return nil, nil
	}
	out := MakeFlows(int(min(count, uint64(preallocLimit))))
	var block []byte
	for uint64(len(out)) < count {
		boff := c.off
		nrec, err := c.uvarint()
		if err != nil {
			return nil, err
		}
		nb, err := c.uvarint()
		if err != nil {
			return nil, err
		}
		if nrec == 0 || nrec > count-uint64(len(out)) || nb > 64<<20 || nb < nrec {
			return nil, c.fail(boff, fmt.Sprintf("%s[%d]: bad block (%d entries in %d bytes, %d of %d read)", what, len(out), nrec, nb, len(out), count))
		}
		if uint64(cap(block)) < nb {
			block = make([]byte, nb)
		}
		block = block[:nb]
		start := c.off
		m, err := io.ReadFull(c.r, block)
		c.off += int64(m)
		if err != nil {
			return nil, c.ioErr(err)
		}
		if uint64(cap(out)-len(out)) < nrec {
			// Grow with what was read, never to a count that was only
			// claimed: nrec entries came in nb bytes just read, and the
			// cap(out) before them were read too.
			out = growFlows(out, int(min(count, max(growFactor*uint64(cap(out)), uint64(len(out))+nrec))))
		}
		d := flowDecoder{b: block, names: names, base: base}
		for range nrec {
			at := d.i
			var f Flow
			if err := d.flow(&f); err != nil {
				return nil, c.fail(start+int64(at), fmt.Sprintf("%s[%d]: %v", what, len(out), err))
			}
			out = append(out, f)
		}
		if d.i != len(d.b) {
			return nil, c.fail(start+int64(d.i), fmt.Sprintf("%s[%d]: %d bytes left over in the block", what, len(out), len(d.b)-d.i))
		}
	}
	return out, nil
}

// flowDecoder decodes records from one block.
type flowDecoder struct {
	b     []byte
	i     int
	names []string
	base  int64
}

var errShort = errors.New("record ends early")

func (d *flowDecoder) byte() (byte, error) {
	if d.i >= len(d.b) {
		return 0, errShort
	}
	v := d.b[d.i]
	d.i++
	return v, nil
}

func (d *flowDecoder) uvarint() (uint64, error) {
	v, n := binary.Uvarint(d.b[d.i:])
	if n <= 0 {
		if n == 0 {
			return 0, errShort
		}
		return 0, errors.New("varint overflows 64 bits")
	}
	d.i += n
	return v, nil
}

func (d *flowDecoder) addr() (netip.Addr, error) {
	k, err := d.byte()
	if err != nil {
		return netip.Addr{}, err
	}
	if k != 4 && k != 16 {
		return netip.Addr{}, fmt.Errorf("address of %d bytes", k)
	}
	if len(d.b)-d.i < int(k) {
		return netip.Addr{}, errShort
	}
	a, _ := netip.AddrFromSlice(d.b[d.i : d.i+int(k)])
	d.i += int(k)
	return a, nil
}

func (d *flowDecoder) time(base int64) (time.Time, error) {
	z, err := d.uvarint()
	if err != nil {
		return time.Time{}, err
	}
	ns, err := d.uvarint()
	if err != nil {
		return time.Time{}, err
	}
	if ns >= 1e9 {
		return time.Time{}, fmt.Errorf("nanoseconds %d out of range", ns)
	}
	t := time.Unix(int64(uint64(base)+uint64(unzigzag(z))), int64(ns)).UTC()
	if t.IsZero() {
		return time.Time{}, errors.New("zero time with its presence flag set")
	}
	return t, nil
}

func (d *flowDecoder) flow(f *Flow) error {
	var hdr [3]byte
	for i := range hdr {
		v, err := d.byte()
		if err != nil {
			return err
		}
		hdr[i] = v
	}
	fl := hdr[0]
	f.Direction, f.Proto = Direction(hdr[1]), Proto(hdr[2])
	f.DirectionInferred = fl&cfInferred != 0
	f.Fragment = fl&cfFragment != 0
	idx, err := d.uvarint()
	if err != nil {
		return err
	}
	if idx >= uint64(len(d.names)) {
		return fmt.Errorf("interface %d of %d", idx, len(d.names))
	}
	f.Interface = d.names[idx]
	port, err := d.uvarint()
	if err != nil {
		return err
	}
	if port > 0xffff {
		return fmt.Errorf("port %d out of range", port)
	}
	f.Port = uint16(port)
	if fl&cfPeer != 0 {
		if f.Peer, err = d.addr(); err != nil {
			return err
		}
		if fl&cfZone != 0 {
			l, err := d.uvarint()
			if err != nil {
				return err
			}
			if l == 0 || l > 255 || uint64(len(d.b)-d.i) < l || f.Peer.Is4() {
				return fmt.Errorf("bad zone (%d bytes)", l)
			}
			f.Peer = f.Peer.WithZone(string(d.b[d.i : d.i+int(l)]))
			d.i += int(l)
		}
	} else if fl&cfZone != 0 {
		return errors.New("zone without a peer")
	}
	if fl&cfPrefix != 0 {
		a, err := d.addr()
		if err != nil {
			return err
		}
		bits, err := d.byte()
		if err != nil {
			return err
		}
		if int(bits) > a.BitLen() {
			return fmt.Errorf("prefix length %d for a %d-bit address", bits, a.BitLen())
		}
		f.PeerPrefix = netip.PrefixFrom(a, int(bits))
	}
	if f.Peers, err = d.uvarint(); err != nil {
		return err
	}
	if fl&cfSketch != 0 {
		if len(d.b)-d.i < SketchRegisters {
			return errShort
		}
		sk := new(PeerSketch)
		copy(sk[:], d.b[d.i:])
		d.i += SketchRegisters
		f.PeerSketch = sk
	}
	for _, p := range []*uint64{&f.PacketsIn, &f.BytesIn, &f.PacketsOut, &f.BytesOut} {
		if *p, err = d.uvarint(); err != nil {
			return err
		}
	}
	if fl&cfFirst != 0 {
		if f.FirstSeen, err = d.time(d.base); err != nil {
			return fmt.Errorf("first_seen: %w", err)
		}
	}
	if fl&cfLast != 0 {
		lb := d.base
		if fl&cfFirst != 0 {
			lb = f.FirstSeen.Unix()
		}
		if f.LastSeen, err = d.time(lb); err != nil {
			return fmt.Errorf("last_seen: %w", err)
		}
	}
	mask, err := d.uvarint()
	if err != nil {
		return err
	}
	if mask >= 1<<10 {
		return fmt.Errorf("evidence mask %#x has unknown bits", mask)
	}
	if mask != 0 {
		for i, p := range evidenceCounters(&f.Evidence) {
			if mask&(1<<i) != 0 {
				if *p, err = d.uvarint(); err != nil {
					return err
				}
			}
		}
	}
	return nil
}
