package snapshot

import "github.com/flowaudit/flowaudit/internal/hugemem"

// A flowKey's digits for the radix sort, least significant first: the
// low byte of bits (a prefix length, 0–128), then lo, hi and w, each
// from its lowest byte up.
const keyDigits = 1 + 3*8

// digit returns k's digit d (see keyDigits).
func (k *flowKey) digit(d int) byte {
	switch {
	case d == 0:
		return byte(k.bits)
	case d <= 8:
		return byte(k.lo >> (8 * (d - 1)))
	case d <= 16:
		return byte(k.hi >> (8 * (d - 9)))
	default:
		return byte(k.w >> (8 * (d - 17)))
	}
}

// radixSort sorts keys by compareKeys, keys that compare equal in the
// order they are given (a stable LSD radix sort), and reports whether it
// did: it declines (and leaves keys as they are) when a prefix length is
// outside 0–255. Only the digits that vary cost a pass: a million IPv4
// flows on one interface vary in about eight of the 25 (address, port,
// protocol, direction); the benchmark's mix of IPv4 and IPv6 peers in 16.
//
// A comparison sort of a million keys makes ~20 million comparisons of
// three words each (~400 ms of CPU on the benchmark VM, ~215 ms on two
// goroutines); this reads the keys once to count every digit, then once
// per varying digit, in order, and writes them to buckets: 16 passes took
// 115 ms on one goroutine, ~7 ms per pass, so even all 25 digits varying
// stay cheaper than comparing.
func radixSort(keys []flowKey) bool {
	n := len(keys)
	if n < 2 {
		return true
	}
	counts := new([keyDigits][256]int)
	for i := range keys {
		k := &keys[i]
		if k.bits < 0 || k.bits > 255 {
			return false
		}
		counts[0][byte(k.bits)]++
		for b := range 8 {
			counts[1+b][byte(k.lo>>(8*b))]++
			counts[9+b][byte(k.hi>>(8*b))]++
			counts[17+b][byte(k.w>>(8*b))]++
		}
	}
	var pass []int
	for d := range keyDigits {
		if counts[d][keys[0].digit(d)] != n {
			pass = append(pass, d)
		}
	}
	if len(pass) == 0 {
		return true
	}
	src, dst := keys, hugemem.Make[flowKey](n)[:n]
	for _, d := range pass {
		var next [256]int
		at := 0
		for v, c := range counts[d] {
			next[v] = at
			at += c
		}
		for i := range src {
			v := src[i].digit(d)
			dst[next[v]] = src[i]
			next[v]++
		}
		src, dst = dst, src
	}
	if len(pass)%2 == 1 {
		copy(keys, src)
	}
	return true
}
