package replay

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/pcapgo"
)

// Capture files: classic pcap and pcapng. pcapgo (gopacket) reads pcapng
// and checks a classic pcap file's header; the records of a classic pcap
// file are read here (pcapRecords), straight out of the read buffer: the
// guard this package needed around pcapgo's Reader already walked every
// record, and pcapgo's copy of each record through two more buffers was a
// third of replay's reading time. TestPcapRecordsMatchPcapgo holds the
// result to what pcapgo behind the guard gave, on every corpus capture.
//
// Three guards around pcapgo and the record reader:
//   - the link type is read from the file header (pcap) or the interface
//     description blocks (pcapng) by this package: pcapgo keeps only its
//     low 8 bits (layers.LinkType is a uint8), which turns SLL2 (276) into
//     20 and a DSA tag (284) into 28;
//   - a pcapng stream goes through pcapngGuard, which checks every block
//     length before pcapgo allocates or skips by it, and which reports a
//     file that ends inside a block as cut short (pcapgo's skips would end
//     it with a plain io.EOF);
//   - pcapRecords does the same for classic pcap records: no record longer than maxRecord (the limit tcpdump and
//     Wireshark use), a cut record reported as cut, and an original length
//     below the captured length (tcpdump's test files have them) raised
//     to the captured length instead of failing the file.

// maxRecord is the longest record accepted (WTAP_MAX_PACKET_SIZE_STANDARD,
// tcpdump's MAXIMUM_SNAPLEN).
const maxRecord = 262144

// maxBlock bounds a pcapng block (Wireshark's MAX_BLOCK_SIZE is 16 MiB
// plus headers).
const maxBlock = 16<<20 + 4096

// linkTypeMask keeps the link type of a pcap header's network field; the
// upper bits carry FCS information (libpcap's LT_LINKTYPE).
const linkTypeMask = 0x03FFFFFF

// CaptureError reports a capture file that could not be read to its end:
// cut short (the file ends inside a record) or corrupt (a record or block
// that cannot be right). Replay keeps every packet before it.
type CaptureError struct {
	File string
	// Packet is the 1-based index of the first packet that could not be
	// read; Packet-1 packets were read and replayed.
	Packet int
	// Truncated: the file ends inside a record (a capture that was cut
	// short, e.g. a killed tcpdump). Otherwise the file is corrupt.
	Truncated bool
	Err       error
}

func (e *CaptureError) Error() string {
	what := "corrupt"
	if e.Truncated {
		what = "cut short"
	}
	return fmt.Sprintf("%s: packet %d: %s: %v (the %d packets before it were replayed)", e.File, e.Packet, what, e.Err, e.Packet-1)
}

func (e *CaptureError) Unwrap() error { return e.Err }

// ErrUnsupportedLinkType is matched (errors.Is) by a *LinkTypeError.
var ErrUnsupportedLinkType = errors.New("unsupported link type")

// LinkTypeError: no record of the capture has a link type replay can turn
// into Ethernet frames.
type LinkTypeError struct {
	File      string
	LinkTypes []uint32 // the capture's link types, sorted
	Records   int      // records read (a pcap's are not read at all)
}

func (e *LinkTypeError) Error() string {
	names := make([]string, len(e.LinkTypes))
	for i, lt := range e.LinkTypes {
		names[i] = LinkTypeName(lt)
	}
	return fmt.Sprintf("%s: unsupported link type %s: replay reads %s", e.File, strings.Join(names, ", "), SupportedLinkTypes)
}

func (e *LinkTypeError) Is(target error) bool { return target == ErrUnsupportedLinkType }

// errCorrupt marks structural damage found by this package's own checks.
type errCorrupt struct{ msg string }

func (e *errCorrupt) Error() string { return e.msg }

// Timestamps replay accepts: what a classic pcap file can hold (unsigned
// 32-bit seconds since 1970, up to 2106-02-07T06:28:16Z). pcapng stores 64
// bits and an offset, and a broken writer or a corrupt block gives times
// hundreds of millennia away (which no snapshot window, JSON timestamp or
// time.Duration can hold).
var (
	MinTimestamp = time.Unix(0, 0).UTC()
	MaxTimestamp = time.Unix(1<<32, 0).UTC() // exclusive
)

// BadTimestamp is a record whose timestamp lies outside [MinTimestamp,
// MaxTimestamp). Replay gives it the timestamp of the previous record
// with a valid one (the first valid one of the file for records before
// it; the Unix epoch when no record has one) and reports it.
type BadTimestamp struct {
	Packet int       // 1-based record index
	Raw    time.Time // as the file has it
	Used   time.Time // what replay used instead
}

func (b BadTimestamp) String() string {
	return fmt.Sprintf("packet %d: timestamp %s outside %s – %s, replaced by %s", b.Packet,
		b.RawText(), MinTimestamp.Format("2006-01-02"), MaxTimestamp.Format("2006-01-02"), b.Used.Format(time.RFC3339Nano))
}

// RawText is the file's timestamp as text; "none" for a pcapng simple
// packet block, which has no timestamp.
func (b BadTimestamp) RawText() string {
	if b.Raw.IsZero() {
		return "none"
	}
	return b.Raw.Format(time.RFC3339Nano)
}

func validTimestamp(t time.Time) bool { return !t.Before(MinTimestamp) && t.Before(MaxTimestamp) }

// record is one packet as read from the file.
type record struct {
	data []byte // valid until the next call to next
	ts   time.Time
	// badTS: the file's timestamp (raw) was out of range; ts is the
	// replacement (the zero time in a scan before the first valid
	// timestamp).
	badTS    bool
	raw      time.Time
	origLen  int // length on the wire
	linkType uint32
	iface    string // pcapng interface name, "" if none
}

// capture reads one capture file record by record.
type capture struct {
	name   string
	f      *os.File
	size   int64
	count  *countingReader
	format string // "pcap" or "pcapng"

	pcap     *pcapRecords
	linkType uint32 // pcap: from the header

	ng      *pcapgo.NgReader
	guard   *pcapngGuard
	section int // pcapng: index of the section pcapgo is in

	read int // records returned so far
	err  error

	// Timestamp repair (BadTimestamp): the last valid timestamp, and
	// what records before the first valid one get (set by the replay
	// pass from the scan).
	lastGood time.Time
	haveGood bool
	fallback time.Time
}

// fixTime checks a record's timestamp and replaces an invalid one.
func (c *capture) fixTime(rec *record) {
	if validTimestamp(rec.ts) {
		c.lastGood, c.haveGood = rec.ts, true
		return
	}
	rec.badTS, rec.raw = true, rec.ts
	if c.haveGood {
		rec.ts = c.lastGood
	} else {
		rec.ts = c.fallback
	}
}

// countingReader counts the bytes read from the file, for progress.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

const (
	pcapngMagic = 0x0A0D0D0A
	pcapngBOM   = 0x1A2B3C4D
)

// openCapture opens a pcap or pcapng file (either may be gzip-compressed)
// and reads its header.
func openCapture(path, name string) (*capture, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	c := &capture{name: name, f: f, size: st.Size(), count: &countingReader{r: f}}
	br := bufio.NewReaderSize(c.count, 1<<16)
	var r *bufio.Reader = br
	if m, _ := br.Peek(2); len(m) == 2 && m[0] == 0x1f && m[1] == 0x8b {
		gz, err := gzip.NewReader(br)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: gzip: %w", name, err)
		}
		r = bufio.NewReaderSize(gz, 1<<16)
	}
	head, err := r.Peek(24)
	if len(head) < 4 {
		f.Close()
		if err == nil || err == io.EOF {
			err = errors.New("file too short for a capture header")
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if binary.LittleEndian.Uint32(head) == pcapngMagic {
		c.format = "pcapng"
		c.guard = &pcapngGuard{r: r}
		c.ng, err = pcapgo.NewNgReader(c.guard, pcapgo.NgReaderOptions{
			WantMixedLinkType:  true,
			SectionEndCallback: func([]pcapgo.NgInterface, pcapgo.NgSectionInfo) { c.section++ },
		})
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: pcapng header: %w", name, err)
		}
		return c, nil
	}
	c.format = "pcap"
	if len(head) < 24 {
		f.Close()
		return nil, fmt.Errorf("%s: file too short for a pcap header (%d bytes)", name, len(head))
	}
	var bo binary.ByteOrder
	switch binary.LittleEndian.Uint32(head) {
	case 0xA1B2C3D4, 0xA1B23C4D:
		bo = binary.LittleEndian
	case 0xD4C3B2A1, 0x4D3CB2A1:
		bo = binary.BigEndian
	default:
		f.Close()
		return nil, fmt.Errorf("%s: not a pcap or pcapng file (magic %#08x)", name, binary.BigEndian.Uint32(head))
	}
	c.linkType = bo.Uint32(head[20:24]) & linkTypeMask
	// pcapgo checks the header (magic, version) and says which time unit
	// the records use.
	hdr, err := pcapgo.NewReader(bytes.NewReader(head[:24]))
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: pcap header: %w", name, err)
	}
	r.Discard(24) //nolint:errcheck // peeked above
	// The read buffer holds the longest record with its header, so every
	// record is returned from it without a copy.
	if r.Size() < pcapRecordMax {
		r = bufio.NewReaderSize(r, pcapRecordMax)
	}
	c.pcap = &pcapRecords{r: r, order: bo, tsFactor: 1000, off: 24}
	if hdr.Resolution() == gopacket.TimestampResolutionNanosecond {
		c.pcap.tsFactor = 1
	}
	return c, nil
}

// pcapRecordMax is a classic pcap record header and the longest record.
const pcapRecordMax = 16 + maxRecord

// pcapRecords reads the records of a classic pcap file: it refuses a record
// longer than maxRecord before reading it, raises an original length below
// the captured length to the captured length (tcpdump and Wireshark read
// such records; tcpdump's test files have them), and reports an end of file
// inside a record as io.ErrUnexpectedEOF.
type pcapRecords struct {
	r        *bufio.Reader // Size() >= pcapRecordMax
	order    binary.ByteOrder
	tsFactor uint32 // nanoseconds per unit of the timestamp's fraction
	off      int64  // file offset of the next record
}

// next returns the next record's data (valid until the next call), its
// timestamp and its original length; io.EOF between records.
func (p *pcapRecords) next() (data []byte, ts time.Time, orig int, err error) {
	h, err := p.r.Peek(16)
	if len(h) < 16 {
		if len(h) == 0 && err == io.EOF {
			return nil, time.Time{}, 0, io.EOF // clean end, between records
		}
		if err == io.EOF || err == nil {
			err = io.ErrUnexpectedEOF
		}
		return nil, time.Time{}, 0, err
	}
	capLen, origLen := p.order.Uint32(h[8:12]), p.order.Uint32(h[12:16])
	if capLen > maxRecord {
		return nil, time.Time{}, 0, &errCorrupt{msg: fmt.Sprintf("pcap record at offset %d: captured length %d exceeds %d", p.off, capLen, maxRecord)}
	}
	origLen = max(origLen, capLen)
	// As pcapgo computes it, the fraction's product in 32 bits included.
	ts = time.Unix(int64(p.order.Uint32(h[0:4])), int64(p.order.Uint32(h[4:8])*p.tsFactor)).UTC()
	n := 16 + int(capLen)
	rec, err := p.r.Peek(n)
	if len(rec) < n {
		if err == io.EOF || err == nil {
			err = io.ErrUnexpectedEOF
		}
		return nil, time.Time{}, 0, err
	}
	p.r.Discard(n) //nolint:errcheck // peeked above; the bytes stay until the next Peek
	p.off += int64(n)
	return rec[16:n:n], ts, int(origLen), nil
}

func (c *capture) close() error { return c.f.Close() }

// bytesRead is how far into the file reading has got.
func (c *capture) bytesRead() int64 { return c.count.n }

// next returns the next record, io.EOF at the clean end of the file, or a
// *CaptureError. After an error every call returns the same error.
func (c *capture) next() (rec record, err error) {
	if c.err != nil {
		return record{}, c.err
	}
	defer func() {
		// pcapgo trusts the file; whatever it trips over is corruption.
		if p := recover(); p != nil {
			err = c.fail(fmt.Errorf("reader panic: %v", p), false)
		}
	}()
	if c.pcap != nil {
		data, ts, orig, err := c.pcap.next()
		switch {
		case err == io.EOF:
			c.err = io.EOF // only between records
			return record{}, io.EOF
		case err != nil:
			return record{}, c.fail(err, errors.Is(err, io.ErrUnexpectedEOF))
		}
		c.read++
		r := record{data: data, ts: ts, origLen: orig, linkType: c.linkType}
		c.fixTime(&r)
		return r, nil
	}
	data, ci, err := c.ng.ReadPacketData()
	if err != nil {
		if err == io.EOF {
			c.err = io.EOF
			return record{}, io.EOF
		}
		// pcapgo does not always wrap what its reader returned (e.g.
		// "could not discard 2 bytes: unexpected EOF"), so ask the guard,
		// which saw the end of file itself.
		truncated := errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(c.guard.err, io.ErrUnexpectedEOF)
		return record{}, c.fail(err, truncated)
	}
	lt, ok := c.guard.linkType(c.section, ci.InterfaceIndex)
	if !ok {
		return record{}, c.fail(fmt.Errorf("packet on interface %d, which has no description block", ci.InterfaceIndex), false)
	}
	var name string
	if ifc, err := c.ng.Interface(ci.InterfaceIndex); err == nil {
		name = ifc.Name
	}
	c.read++
	r := record{data: data, ts: ci.Timestamp, origLen: ci.Length, linkType: lt, iface: name}
	c.fixTime(&r)
	return r, nil
}

func (c *capture) fail(err error, truncated bool) error {
	var ce *errCorrupt
	if errors.As(err, &ce) {
		truncated = false
	}
	c.err = &CaptureError{File: c.name, Packet: c.read + 1, Truncated: truncated, Err: err}
	return c.err
}

// pcapngGuard sits between the file and pcapgo's NgReader and walks the
// block structure on its own: it validates each block's length (and a
// packet block's captured length) before pcapgo sees the block, turns an
// end of file inside a block into io.ErrUnexpectedEOF, and records the
// full 16-bit link type of every interface, per section.
type pcapngGuard struct {
	r         *bufio.Reader
	remaining uint32 // bytes of the current block not yet passed on
	order     binary.ByteOrder
	sections  [][]uint32 // link types of the interfaces of each section
	off       int64      // file offset of the next byte
	err       error
}

const (
	ngSHB = 0x0A0D0D0A
	ngIDB = 1
	ngPB  = 2 // obsolete packet block
	ngSPB = 3
	ngEPB = 6
)

func (g *pcapngGuard) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	if g.remaining == 0 {
		if err := g.nextBlock(); err != nil {
			g.err = err
			return 0, err
		}
	}
	if uint64(len(p)) > uint64(g.remaining) {
		p = p[:g.remaining]
	}
	n, err := g.r.Read(p)
	g.remaining -= uint32(n)
	g.off += int64(n)
	if err == io.EOF {
		// remaining was > 0: the file ends inside this block.
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		g.err = err
	}
	return n, err
}

func (g *pcapngGuard) corrupt(format string, args ...any) error {
	return &errCorrupt{msg: fmt.Sprintf("pcapng block at offset %d: ", g.off) + fmt.Sprintf(format, args...)}
}

// nextBlock validates the header of the block starting at the current
// offset and sets remaining to its length.
func (g *pcapngGuard) nextBlock() error {
	hdr, err := g.r.Peek(8)
	if len(hdr) == 0 && err == io.EOF {
		return io.EOF // clean end, on a block boundary
	}
	if len(hdr) < 8 {
		if err == io.EOF {
			return io.ErrUnexpectedEOF
		}
		return err
	}
	typ := binary.LittleEndian.Uint32(hdr)
	if typ == ngSHB {
		h, err := g.r.Peek(12)
		if len(h) < 12 {
			if err == io.EOF {
				return io.ErrUnexpectedEOF
			}
			return err
		}
		switch {
		case binary.LittleEndian.Uint32(h[8:]) == pcapngBOM:
			g.order = binary.LittleEndian
		case binary.BigEndian.Uint32(h[8:]) == pcapngBOM:
			g.order = binary.BigEndian
		default:
			return g.corrupt("section header with an invalid byte-order magic")
		}
	} else if g.order == nil {
		return g.corrupt("block before the first section header")
	} else {
		typ = g.order.Uint32(hdr)
	}
	length := g.order.Uint32(hdr[4:])
	if length < 12 || length%4 != 0 || length > maxBlock {
		return g.corrupt("block length %d (type %#x)", length, typ)
	}
	// The type-specific part the guard needs, within the block.
	var need uint32
	switch typ {
	case ngSHB:
		need = 28
	case ngIDB:
		need = 20
	case ngEPB, ngPB:
		need = 32
	case ngSPB:
		need = 16
	}
	if length < need {
		return g.corrupt("block of type %#x too short: %d bytes", typ, length)
	}
	var body []byte
	if need > 0 {
		b, err := g.r.Peek(int(need))
		if len(b) < int(need) {
			if err == io.EOF {
				return io.ErrUnexpectedEOF
			}
			return err
		}
		body = b[8:]
	}
	switch typ {
	case ngSHB:
		g.sections = append(g.sections, nil)
	case ngIDB:
		if len(g.sections) == 0 {
			return g.corrupt("interface block outside a section")
		}
		i := len(g.sections) - 1
		g.sections[i] = append(g.sections[i], uint32(g.order.Uint16(body[0:2])))
	case ngEPB, ngPB:
		if capLen := g.order.Uint32(body[12:16]); capLen > length-32 {
			return g.corrupt("captured length %d exceeds the block (%d bytes)", capLen, length)
		}
	case ngSPB:
		if orig := g.order.Uint32(body[0:4]); orig > maxBlock {
			return g.corrupt("simple packet block with a length of %d", orig)
		}
	}
	g.remaining = length
	return nil
}

// linkType returns the link type of interface iface of section sec.
func (g *pcapngGuard) linkType(sec, iface int) (uint32, bool) {
	if sec < 0 || sec >= len(g.sections) || iface < 0 || iface >= len(g.sections[sec]) {
		return 0, false
	}
	return g.sections[sec][iface], true
}
