// Package hugemem allocates large slices backed by transparent huge pages.
//
// With THP in "madvise" mode (Debian's default) the Go heap gets 4 KiB
// pages, and the first touch of each costs a page fault: on the 2-vCPU VM
// flowaudit is benchmarked on, ~17 µs, i.e. ~4.4 ms per MiB — more than a
// second for the few hundred MiB a million flows take. A slice advised
// with MADV_HUGEPAGE before it is touched costs one fault per 2 MiB.
package hugemem

import "unsafe"

// hugePage is the size of a transparent huge page on x86-64 and on arm64
// with 4 KiB base pages.
const hugePage = 2 << 20

// Make returns a zero-length slice with capacity n. When the backing array
// spans at least four huge pages, the whole huge pages inside it are
// advised MADV_HUGEPAGE (Linux only; elsewhere, and if the kernel refuses,
// the memory works the same without the advice).
func Make[T any](n int) []T {
	s := make([]T, n)
	var zero T
	if size := uintptr(n) * unsafe.Sizeof(zero); size >= 4*hugePage {
		advise(unsafe.Pointer(unsafe.SliceData(s)), size)
	}
	return s[:0]
}
