package main

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// progRunAttr is the BPF_PROG_TEST_RUN part of union bpf_attr
// (include/uapi/linux/bpf.h, struct test). flowbench issues the syscall
// itself rather than through ebpf.Program.Run, which silently restarts a
// whole run after EINTR: that would count a run twice in the wall time and
// send an unknown number of extra frames in live mode.
type progRunAttr struct {
	progFD      uint32
	retval      uint32
	dataSizeIn  uint32
	dataSizeOut uint32
	dataIn      uint64
	dataOut     uint64
	repeat      uint32
	duration    uint32
	ctxSizeIn   uint32
	ctxSizeOut  uint32
	ctxIn       uint64
	ctxOut      uint64
	flags       uint32
	cpu         uint32
	batchSize   uint32
	_           uint32
}

// xdpMD is struct xdp_md, the context of an XDP test run.
type xdpMD struct {
	data, dataEnd, dataMeta, ingressIfindex, rxQueueIndex, egressIfindex uint32
}

// errInterrupted: a run was cut short by a signal (the time bound, or a
// stray signal); its counts are unknown and it is not used.
var errInterrupted = errors.New("test run interrupted")

// runResult is one BPF_PROG_TEST_RUN call.
type runResult struct {
	wall   time.Duration // wall clock around the syscall
	kernel time.Duration // the kernel's own average per repeat (rounded down to 1 ns)
	retval uint32
}

// testRun runs p repeat times on frame with BPF_PROG_TEST_RUN. live sets
// BPF_F_TEST_XDP_LIVE_FRAMES (frames really leave through ifindex when the
// program returns XDP_TX). The caller's goroutine must be locked to its OS
// thread, which blocks every asynchronous signal but SIGUSR1 (see
// pinnedWorker). If the run exceeds bound, or stop is closed, the thread
// is sent SIGUSR1 (caught and ignored by the Go runtime): the kernel ends
// the run between two batches and errInterrupted is returned.
func testRun(p *ebpf.Program, frame []byte, repeat uint32, live bool, ifindex uint32, batch uint32, bound time.Duration, stop <-chan struct{}) (runResult, error) {
	attr := progRunAttr{
		progFD:     uint32(p.FD()),
		dataSizeIn: uint32(len(frame)),
		dataIn:     uint64(uintptr(unsafe.Pointer(&frame[0]))),
		repeat:     repeat,
	}
	var ctx xdpMD
	if live {
		ctx = xdpMD{dataEnd: uint32(len(frame)), ingressIfindex: ifindex}
		attr.ctxSizeIn = uint32(unsafe.Sizeof(ctx))
		attr.ctxIn = uint64(uintptr(unsafe.Pointer(&ctx)))
		attr.flags = unix.BPF_F_TEST_XDP_LIVE_FRAMES
		attr.batchSize = batch
	}
	tid := unix.Gettid()
	pid := unix.Getpid()
	done := make(chan struct{})
	go func() {
		timer := time.NewTimer(bound)
		defer timer.Stop()
		select {
		case <-done:
			return
		case <-timer.C:
		case <-stop:
		}
		// Keep poking until the syscall notices (it checks between repeats).
		for {
			unix.Tgkill(pid, tid, unix.SIGUSR1) //nolint:errcheck
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	t0 := time.Now()
	_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_TEST_RUN, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	wall := time.Since(t0)
	close(done)
	runtime.KeepAlive(frame)
	runtime.KeepAlive(&ctx)
	if errno == unix.EINTR {
		return runResult{}, fmt.Errorf("%w after %s (bound %s)", errInterrupted, wall.Round(time.Millisecond), bound)
	}
	if errno != 0 {
		return runResult{}, fmt.Errorf("BPF_PROG_TEST_RUN: %w", errno)
	}
	return runResult{wall: wall, kernel: time.Duration(attr.duration), retval: attr.retval}, nil
}

// pinnedWorker runs functions on one OS thread pinned to one CPU, so every
// measurement of a series runs on the same core.
type pinnedWorker struct {
	jobs chan func()
	tid  int // the worker's thread
}

func newPinnedWorker(cpu int) (*pinnedWorker, error) {
	w := &pinnedWorker{jobs: make(chan func())}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		var set unix.CPUSet
		set.Set(cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			errc <- fmt.Errorf("pin to CPU %d: %w", cpu, err)
			return
		}
		// A signal ends a test run early (EINTR). Block the asynchronous
		// ones on this thread (the runtime's preemption SIGURG, SIGCHLD of
		// the tools flowbench starts, …) so they go to other threads; only
		// SIGUSR1, the harness's own stop signal, gets through.
		var mask unix.Sigset_t
		for _, sig := range []unix.Signal{unix.SIGURG, unix.SIGCHLD, unix.SIGPIPE, unix.SIGWINCH, unix.SIGPROF,
			unix.SIGALRM, unix.SIGIO, unix.SIGUSR2, unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGQUIT} {
			mask.Val[(sig-1)/64] |= 1 << ((uint(sig) - 1) % 64)
		}
		if err := unix.PthreadSigmask(unix.SIG_BLOCK, &mask, nil); err != nil {
			errc <- fmt.Errorf("block signals: %w", err)
			return
		}
		w.tid = unix.Gettid()
		errc <- nil
		for job := range w.jobs {
			job()
		}
	}()
	if err := <-errc; err != nil {
		return nil, err
	}
	return w, nil
}

// do runs fn on the worker's thread and waits for it.
func (w *pinnedWorker) do(fn func() error) error {
	errc := make(chan error, 1)
	w.jobs <- func() { errc <- fn() }
	return <-errc
}

func (w *pinnedWorker) stop() { close(w.jobs) }

// clearCPU moves every thread of this process but keep off cpu (to the
// other online CPUs) and returns a function that puts them back. Threads
// created meanwhile inherit the narrower set from their creators. Part 2
// runs the generator and the receiving veth's NAPI on cpu: without this,
// the Go runtime's other threads (garbage collection, the collectors'
// goroutines, the counters read between runs) also ran there, on the side
// of whichever receiver happened to be measured.
// unpinThreads lets every thread of this process run on every CPU again.
// Part 2 moves threads away from the measuring CPU (clearCPU); a thread
// created meanwhile inherits its creator's mask and is in no restore list,
// and a child process inherits the mask of the thread that starts it.
// Parts 4 and 5, which use both CPUs, and the scale children call it
// first: after part 2 a scale child ran on CPU 0 alone (a 1 M-flow map
// read took 2.06 s against 0.81-1.06 s with both CPUs).
func unpinThreads() error {
	var all unix.CPUSet
	for c := 0; c < runtime.NumCPU(); c++ {
		all.Set(c)
	}
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			unix.SchedSetaffinity(tid, &all) //nolint:errcheck // the thread may have exited
		}
	}
	return nil
}

func clearCPU(cpu int, keep int) (restore func(), err error) {
	var others unix.CPUSet
	for c := 0; c < runtime.NumCPU(); c++ {
		if c != cpu {
			others.Set(c)
		}
	}
	if others.Count() == 0 {
		return func() {}, nil // one CPU: nowhere else to go
	}
	saved := map[int]unix.CPUSet{}
	restore = func() {
		for tid, set := range saved {
			unix.SchedSetaffinity(tid, &set) //nolint:errcheck // the thread may have exited
		}
	}
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil || tid == keep {
			continue
		}
		var set unix.CPUSet
		if unix.SchedGetaffinity(tid, &set) != nil {
			continue // exited
		}
		if unix.SchedSetaffinity(tid, &others) == nil {
			saved[tid] = set
		}
	}
	return restore, nil
}
