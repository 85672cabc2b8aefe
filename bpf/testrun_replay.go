package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// flowaudit_replay (flowaudit.c) runs a batch of captured frames in one
// BPF_PROG_TEST_RUN: a window of ReplayWindow bytes (the linear part of the
// buffer test_run builds; its content does not matter), then each frame
// after its descriptor of ReplayDescLen bytes, in order.
const (
	// ReplayDescLen is the size of struct replay_desc.
	ReplayDescLen = 16
	// ReplayWindow is the linear part of an XDP test_run buffer on 4 KiB
	// pages (4096 - 256 headroom - 320 skb_shared_info), the longest
	// frame a batch can present.
	ReplayWindow = 3520
	// ReplayBatchMax is the most frames one batch may hold.
	ReplayBatchMax = 512
	// ReplayBatchBytes is the longest batch: bpf_xdp_load_bytes takes
	// offsets up to 0xffff (the rest is in page frags: 15 of the 17
	// test_run allows).
	ReplayBatchBytes = 0xffff
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

// RunReplayBatch runs flowaudit_replay on a batch laid out as
// [window][D_1][F_1]...[D_n][F_n] (at most ReplayBatchMax frames of 14 to
// ReplayWindow bytes, ReplayBatchBytes in all).
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

// ReplayLoaded reports whether the collector holds the replay program;
// LiveLoaded whether it holds the live (per-packet) programs.
func (c *Collector) ReplayLoaded() bool { return c.objs.FlowauditReplay != nil }
func (c *Collector) LiveLoaded() bool   { return c.objs.FlowauditXdp != nil }
