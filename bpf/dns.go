package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/ringbuf"
	"go.uber.org/zap"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/internal/passivedns"
)

// DefaultDNSRing is the size of the ring buffer that carries DNS answers
// from the programs to userspace (dns_ring): 512 KiB, about 390 answers of
// up to 1280 bytes waiting to be read. A full ring drops answers and
// counts them (snapshot.DNS.Dropped).
const DefaultDNSRing = 512 * 1024

// dnsCap is DNS_CAP in flowaudit.c: the payload bytes one event carries.
const dnsCap = len(flowauditDnsEvent{}.Data)

// dnsHeaderLen is the offset of the payload in a dns_event.
var dnsHeaderLen = int(unsafe.Offsetof(flowauditDnsEvent{}.Data))

// dnsReader drains dns_ring into a passive DNS table.
type dnsReader struct {
	rd      *ringbuf.Reader
	tab     *passivedns.Table
	wall    func(uint64) time.Time
	log     *zap.Logger
	flushMu sync.Mutex
	flushed chan struct{}
	done    chan struct{}
	drain   time.Duration // dnsDrainEvery, or Options.dnsDrain
}

func newDNSReader(c *Collector, drain time.Duration) (*dnsReader, error) {
	rd, err := ringbuf.NewReader(c.objs.DnsRing)
	if err != nil {
		return nil, fmt.Errorf("dns ring buffer: %w", err)
	}
	d := &dnsReader{rd: rd, tab: passivedns.NewTable(0), wall: c.boot.wall, log: c.log,
		flushed: make(chan struct{}, 1), done: make(chan struct{}), drain: drain}
	go d.loop()
	return d, nil
}

// dnsDrainEvery: the programs wake the reader only once a quarter of the
// ring is taken (dns_wake_bytes in flowaudit.c); fewer answers wait at most
// this long, or until the next DNS() call flushes them.
const dnsDrainEvery = 200 * time.Millisecond

func (d *dnsReader) loop() {
	defer close(d.done)
	var rec ringbuf.Record
	d.rd.SetDeadline(time.Now().Add(d.drain))
	for {
		err := d.rd.ReadInto(&rec)
		switch {
		case err == nil:
			d.handle(rec.RawSample)
		case errors.Is(err, os.ErrDeadlineExceeded):
			// Everything waiting has been read: wait again.
			d.rd.SetDeadline(time.Now().Add(d.drain))
		case errors.Is(err, ringbuf.ErrFlushed):
			select {
			case d.flushed <- struct{}{}:
			default:
			}
		case errors.Is(err, ringbuf.ErrClosed), errors.Is(err, os.ErrClosed):
			return
		default:
			d.log.Warn("dns ring buffer", zap.Error(err))
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// handle adds one dns_event to the table.
func (d *dnsReader) handle(raw []byte) {
	if len(raw) < dnsHeaderLen {
		return
	}
	var ev flowauditDnsEvent
	ev.Jiffies = binary.LittleEndian.Uint64(raw[0:8])
	copy(ev.Server[:], raw[8:24])
	ev.Len = binary.LittleEndian.Uint32(raw[28:32])
	ev.WireLen = binary.LittleEndian.Uint32(raw[32:36])
	ev.Proto = raw[36]
	n := min(int(ev.Len), dnsCap, len(raw)-dnsHeaderLen)
	payload := raw[dnsHeaderLen : dnsHeaderLen+n]
	d.tab.Add(payload, ev.Proto == 6, ev.WireLen > ev.Len, netip.AddrFrom16(ev.Server).Unmap(), d.wall(ev.Jiffies))
}

// sync returns once every answer submitted before it was called is in
// the table.
func (d *dnsReader) sync() {
	d.flushMu.Lock()
	defer d.flushMu.Unlock()
	select {
	case <-d.flushed:
	default:
	}
	if d.rd.Flush() != nil {
		return
	}
	select {
	case <-d.flushed:
	case <-d.done:
	case <-time.After(5 * time.Second):
		d.log.Warn("dns ring buffer: flush not acknowledged in 5s")
	}
}

func (d *dnsReader) close() error {
	err := d.rd.Close()
	<-d.done
	return err
}

// DNSRecordBytes is what one DNS answer takes in the ring (DNS_RECORD in
// flowaudit.c: the ring's record header and a dns_event, 8-byte aligned).
var DNSRecordBytes = (8 + int(unsafe.Sizeof(flowauditDnsEvent{})) + 7) / 8 * 8

// DNSRoom makes room in the DNS ring for n more answers when it can: if
// the answers waiting there and n more would not fit, it waits until the
// reader has read every answer submitted so far (replay calls it before
// each batch it runs, so that its bursts never overflow the ring). It
// returns how many answers the ring holds when empty; 0 without a reader.
func (c *Collector) DNSRoom(n int) int {
	if c.dns == nil {
		return 0
	}
	size := c.dns.rd.BufferSize()
	if c.dns.rd.AvailableBytes()+n*DNSRecordBytes > size {
		c.dns.sync()
	}
	return size / DNSRecordBytes
}

// DNS returns what the programs' DNS answers taught so far (passive DNS):
// it waits until every answer already submitted has been read. nil when
// the collector carries no DNS reader.
func (c *Collector) DNS() (*snapshot.DNS, error) {
	return c.dnsSnapshot(nil)
}

// DNSWithTime is DNS with every time mapped through conv (replay maps the
// programs' clock to capture time).
func (c *Collector) DNSWithTime(conv func(time.Time) (time.Time, time.Time)) (*snapshot.DNS, error) {
	return c.dnsSnapshot(conv)
}

func (c *Collector) dnsSnapshot(conv func(time.Time) (time.Time, time.Time)) (*snapshot.DNS, error) {
	if c.dns == nil {
		return nil, nil
	}
	c.dns.sync()
	var per []uint64
	if err := c.objs.Stats.Lookup(uint32(flowauditStatSTAT_DNS_DROPPED), &per); err != nil {
		return nil, fmt.Errorf("read stats[dns dropped]: %w", err)
	}
	var dropped uint64
	for _, v := range per {
		dropped += v
	}
	return c.dns.tab.Snapshot(dropped, conv), nil
}
