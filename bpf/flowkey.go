package bpf

// struct flow_key packs the direction and the flags into one byte,
// dir_flags, so that the key is 24 bytes without padding (flowaudit.c).
// The accumulator keeps an entry's fold level in the byte's upper half,
// which the kernel always leaves zero.
const (
	keyDirMask = 0x3 // enum direction, bits 0-1

	// FLOW_F_*, as in flowaudit.c (bits 2-3).
	flowFlagInferred = 1 << 2
	flowFlagFragment = 1 << 3
	keyFlagMask      = flowFlagInferred | flowFlagFragment

	foldShift = 4 // fold level (foldNone, foldPrefix, foldOther), bits 4-7
)

// dir is the key's enum direction.
func (k *flowauditFlowKey) dir() uint8 { return k.DirFlags & keyDirMask }

// flags are the key's FLOW_F_* bits.
func (k *flowauditFlowKey) flags() uint8 { return k.DirFlags & keyFlagMask }

// fold is an accumulator key's fold level (foldNone for kernel keys).
func (k *flowauditFlowKey) fold() uint8 { return k.DirFlags >> foldShift }

// setFold sets an accumulator key's fold level.
func (k *flowauditFlowKey) setFold(level uint8) {
	k.DirFlags = k.DirFlags&^(0xf<<foldShift) | level<<foldShift
}
