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
	"path/filepath"
	"testing"
	"time"

	"github.com/gopacket/gopacket/pcapgo"
)

// The classic pcap reader as it was before pcapRecords: gopacket's pcapgo
// Reader behind pcapGuard. TestPcapRecordsMatchPcapgo holds pcapRecords to
// it.

// pcapGuard sits between the file and pcapgo's Reader: it walks the
// records on its own, refuses a record longer than maxRecord before pcapgo
// allocates for it, raises an original length below the captured length
// to the captured length (pcapgo refuses such records, tcpdump and
// Wireshark read them), and turns an end of file inside a record into
// io.ErrUnexpectedEOF.
type pcapGuard struct {
	r          *bufio.Reader
	order      binary.ByteOrder
	fileHeader int      // bytes of the file header still to pass on
	hdr        [16]byte // the current record header, possibly fixed
	hdrLeft    int      // bytes of hdr not yet passed on
	remaining  uint32   // data bytes of the current record not yet passed on
	off        int64
	err        error
}

func (g *pcapGuard) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	n, err := g.read(p)
	g.off += int64(n)
	if err != nil {
		g.err = err
	}
	return n, err
}

func (g *pcapGuard) read(p []byte) (int, error) {
	if g.fileHeader > 0 {
		if len(p) > g.fileHeader {
			p = p[:g.fileHeader]
		}
		n, err := g.r.Read(p)
		g.fileHeader -= n
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return n, err
	}
	if g.hdrLeft == 0 && g.remaining == 0 {
		h, err := g.r.Peek(16)
		if len(h) == 0 && err == io.EOF {
			return 0, io.EOF // clean end, between records
		}
		if len(h) < 16 {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		capLen, orig := g.order.Uint32(h[8:12]), g.order.Uint32(h[12:16])
		if capLen > maxRecord {
			return 0, &errCorrupt{msg: fmt.Sprintf("pcap record at offset %d: captured length %d exceeds %d", g.off, capLen, maxRecord)}
		}
		copy(g.hdr[:], h)
		if orig < capLen {
			g.order.PutUint32(g.hdr[12:16], capLen)
		}
		g.r.Discard(16) //nolint:errcheck // peeked above
		g.hdrLeft, g.remaining = 16, capLen
	}
	if g.hdrLeft > 0 {
		n := copy(p, g.hdr[16-g.hdrLeft:])
		g.hdrLeft -= n
		return n, nil
	}
	if uint64(len(p)) > uint64(g.remaining) {
		p = p[:g.remaining]
	}
	n, err := g.r.Read(p)
	g.remaining -= uint32(n)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// pcapgoRecord is one record as pcapgo behind pcapGuard gave it.
type pcapgoRecord struct {
	data []byte
	ts   time.Time
	orig int
}

// readPcapgo reads a classic pcap file the old way: its records, and how
// the reading ended (io.EOF when clean).
func readPcapgo(path string) (recs []pcapgoRecord, end error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r = bufio.NewReaderSize(f, 1<<16)
	if m, _ := r.Peek(2); len(m) == 2 && m[0] == 0x1f && m[1] == 0x8b {
		gz, err := gzip.NewReader(r)
		if err != nil {
			return nil, err
		}
		r = bufio.NewReaderSize(gz, 1<<16)
	}
	head, _ := r.Peek(24)
	if len(head) < 24 {
		return nil, errors.New("short header")
	}
	var bo binary.ByteOrder = binary.LittleEndian
	switch binary.LittleEndian.Uint32(head) {
	case 0xD4C3B2A1, 0x4D3CB2A1:
		bo = binary.BigEndian
	}
	rd, err := pcapgo.NewReader(&pcapGuard{r: r, order: bo, fileHeader: 24})
	if err != nil {
		return nil, fmt.Errorf("pcap header: %w", err)
	}
	rd.SetSnaplen(maxRecord)
	defer func() {
		if p := recover(); p != nil {
			end = fmt.Errorf("reader panic: %v", p)
		}
	}()
	for {
		data, ci, err := rd.ZeroCopyReadPacketData()
		if err != nil {
			return recs, err
		}
		recs = append(recs, pcapgoRecord{append([]byte(nil), data...), ci.Timestamp, ci.Length})
	}
}

// readRecords reads a classic pcap file with pcapRecords, as capture does.
func readRecords(path string) (recs []pcapgoRecord, end error) {
	cp, err := openCapture(path, filepath.Base(path))
	if err != nil {
		return nil, err
	}
	defer cp.close()
	if cp.pcap == nil {
		return nil, errors.New("not read as classic pcap")
	}
	for {
		data, ts, orig, err := cp.pcap.next()
		if err != nil {
			return recs, err
		}
		recs = append(recs, pcapgoRecord{append([]byte(nil), data...), ts, orig})
	}
}

// sameEnd: both readers ended the same way.
func sameEnd(a, b error) bool {
	switch {
	case a == io.EOF || b == io.EOF:
		return a == b
	case errors.Is(a, io.ErrUnexpectedEOF) || errors.Is(b, io.ErrUnexpectedEOF):
		return errors.Is(a, io.ErrUnexpectedEOF) && errors.Is(b, io.ErrUnexpectedEOF)
	}
	return a.Error() == b.Error()
}

// TestPcapRecordsMatchPcapgo: pcapRecords returns exactly the records
// (bytes, timestamp, original length) pcapgo behind pcapGuard returned,
// and ends the same way, on every classic pcap of the tcpdump corpus and
// on damaged, big-endian, nanosecond, gzip and longest-record files.
func TestPcapRecordsMatchPcapgo(t *testing.T) {
	var files []string
	for _, f := range corpusFiles(t) {
		if filepath.Ext(f) == ".pcap" {
			files = append(files, f)
		}
	}
	// Synthetic files: a record of every kind the readers treat apart.
	raw, _, rec3 := threeFramePcap(t)
	mod := func(off int, v uint32) []byte { return withUint32(raw, off, v) }
	// Big-endian microseconds, with a fraction whose nanoseconds overflow
	// 32 bits as pcapgo computes them, and the longest record there is.
	var be bytes.Buffer
	w32 := func(v uint32) { binary.Write(&be, binary.BigEndian, v) } //nolint:errcheck // a bytes.Buffer
	w32(0xA1B2C3D4)
	be.Write([]byte{0, 2, 0, 4})
	w32(0)
	w32(0)
	w32(65535)
	w32(1)
	for i, n := range []int{60, maxRecord, 14} {
		w32(uint32(1700000000 + i))
		w32([]uint32{999999, 4294967295, 5000000}[i])
		w32(uint32(n))
		w32(uint32(n))
		be.Write(bytes.Repeat([]byte{byte(i + 1)}, n))
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw) //nolint:errcheck // a bytes.Buffer
	zw.Close()
	for _, s := range []struct {
		name string
		data []byte
	}{
		{"complete.pcap", raw},
		{"cut-header.pcap", raw[:rec3+7]},
		{"cut-data.pcap", raw[:len(raw)-5]},
		{"huge.pcap", mod(rec3+8, 1<<30)},
		{"just-too-long.pcap", mod(rec3+8, maxRecord+1)},
		{"orig-below-cap.pcap", mod(rec3+12, 10)},
		{"bad-minor.pcap", mod(4, 2|5<<16)},
		{"big-endian-longest.pcap", be.Bytes()},
		{"gzip.pcap.gz", gz.Bytes()},
	} {
		files = append(files, writeFile(t, s.name, s.data))
	}
	n := 0
	for _, path := range files {
		old, oldEnd := readPcapgo(path)
		cur, curEnd := readRecords(path)
		name := filepath.Base(path)
		if oldEnd != nil && len(old) == 0 && curEnd != nil && len(cur) == 0 && !errors.Is(oldEnd, io.EOF) {
			// Both refuse the file (its header): nothing more to compare.
			continue
		}
		n++
		if len(cur) != len(old) {
			t.Errorf("%s: %d records, pcapgo read %d", name, len(cur), len(old))
		}
		for i := range min(len(cur), len(old)) {
			a, b := cur[i], old[i]
			if !bytes.Equal(a.data, b.data) || !a.ts.Equal(b.ts) || a.ts.Location() != b.ts.Location() || a.orig != b.orig {
				t.Errorf("%s record %d: %d bytes at %v, orig %d; pcapgo: %d bytes at %v, orig %d",
					name, i+1, len(a.data), a.ts, a.orig, len(b.data), b.ts, b.orig)
				break
			}
		}
		if !sameEnd(curEnd, oldEnd) {
			t.Errorf("%s: ended with %v, pcapgo with %v", name, curEnd, oldEnd)
		}
	}
	if n < 100 {
		t.Errorf("only %d files compared", n)
	}
}
