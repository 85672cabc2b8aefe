package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// flowaudit_replay (flowaudit.c) runs a batch of captured frames in one
// BPF_PROG_TEST_RUN: each frame followed by a descriptor of ReplayDescLen
// bytes, the earliest frame last.
const (
	// ReplayDescLen is the size of struct replay_desc.
	ReplayDescLen = 16
	// ReplayBatchMax is the most frames one batch may hold.
	ReplayBatchMax = 128
	// ReplayBatchBytes is the longest batch: the linear frame test_run
	// builds for XDP on 4 KiB pages (4096 - 256 headroom - 320 tailroom).
	ReplayBatchBytes = 3520
	// ethHLen: the shortest frame test_run accepts.
	ethHLen = 14
)

// PutReplayDesc writes the descriptor of a frame of frameLen bytes to b
// (ReplayDescLen bytes): its time stamp in the programs' clock (see
// JiffiesAt) and whether it is outgoing (counted as flowaudit_tc_egress
// counts it) or incoming (as flowaudit_xdp).
func PutReplayDesc(b []byte, stamp uint64, frameLen int, egress bool) {
	binary.NativeEndian.PutUint64(b[0:8], stamp)
	binary.NativeEndian.PutUint32(b[8:12], uint32(frameLen))
	e := uint32(0)
	if egress {
		e = 1
	}
	binary.NativeEndian.PutUint32(b[12:16], e)
}

// ErrNoReplayProgram: the collector was opened without LoadReplay.
var ErrNoReplayProgram = errors.New("collector opened without the replay program (bpf.Options.Programs: LoadReplay)")

// xdpMD is the kernel's struct xdp_md, the context test_run takes.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// RunReplayBatch runs flowaudit_replay on a batch laid out as
// [F_n][D_n]...[F_1][D_1] (at most ReplayBatchMax frames of at least 14
// bytes, ReplayBatchBytes in all). The program leaves the batch unchanged
// for the caller (test_run copies it in).
func (c *Collector) RunReplayBatch(batch []byte) error {
	p := c.objs.FlowauditReplay
	if p == nil {
		return ErrNoReplayProgram
	}
	ret, err := p.Run(&ebpf.RunOptions{Data: batch})
	if err != nil {
		return fmt.Errorf("replay batch of %d bytes: %w", len(batch), err)
	}
	if ret != 2 { // XDP_PASS
		return fmt.Errorf("replay batch of %d bytes: verdict %d: malformed batch", len(batch), ret)
	}
	return nil
}

// RunReplayFrame runs flowaudit_replay on one frame too long to share a
// batch with its descriptor: buf is [descriptor][frame], the descriptor
// given to the program as XDP metadata.
func (c *Collector) RunReplayFrame(buf []byte) error {
	p := c.objs.FlowauditReplay
	if p == nil {
		return ErrNoReplayProgram
	}
	ret, err := p.Run(&ebpf.RunOptions{Data: buf,
		Context: xdpMD{Data: ReplayDescLen, DataEnd: uint32(len(buf))}})
	if err != nil {
		return fmt.Errorf("replay frame of %d bytes: %w", len(buf)-ReplayDescLen, err)
	}
	if ret != 2 {
		return fmt.Errorf("replay frame of %d bytes: verdict %d", len(buf)-ReplayDescLen, ret)
	}
	return nil
}

// ReplayLoaded reports whether the collector holds the replay program;
// LiveLoaded whether it holds the live (per-packet) programs.
func (c *Collector) ReplayLoaded() bool { return c.objs.FlowauditReplay != nil }
func (c *Collector) LiveLoaded() bool   { return c.objs.FlowauditXdp != nil }
