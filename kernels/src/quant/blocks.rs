//! Byte layouts of the GGML blocks (identical to ggml's, so GGUF tensor data
//! is used in place). Half-precision scales are kept as raw `u16` bits.

use half::f16;

pub const QK: usize = 32;
pub const QK_K: usize = 256;

#[inline(always)]
pub fn f16_bits(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: u16,
    pub qs: [u8; QK / 2],
}

#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: u16,
    pub m: u16,
    pub qs: [u8; QK / 2],
}

#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: u16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ5_1 {
    pub d: u16,
    pub m: u16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: u16,
    pub qs: [i8; QK],
}

/// Activation block for Q4_1 / Q5_1 weights: `s` is `d * sum(qs)`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8_1 {
    pub d: u16,
    pub s: u16,
    pub qs: [i8; QK],
}

#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: u16,
    pub dmin: u16,
}

#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: u16,
}

#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ4K {
    pub d: u16,
    pub dmin: u16,
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}

#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ5K {
    pub d: u16,
    pub dmin: u16,
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: u16,
}

/// Activation block for k-quant weights: `bsums[j]` sums `qs[16j..16j+16]`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);
const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 84);
const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 110);
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);

/// Marker for block types that may be viewed in place from raw bytes: plain
/// old data, no padding, every bit pattern valid.
///
/// # Safety
/// Implementors must be `repr(C)` structs of integer fields without padding.
pub unsafe trait Pod: Copy + 'static {}
unsafe impl Pod for BlockQ4_0 {}
unsafe impl Pod for BlockQ4_1 {}
unsafe impl Pod for BlockQ5_0 {}
unsafe impl Pod for BlockQ5_1 {}
unsafe impl Pod for BlockQ8_0 {}
unsafe impl Pod for BlockQ8_1 {}
unsafe impl Pod for BlockQ2K {}
unsafe impl Pod for BlockQ3K {}
unsafe impl Pod for BlockQ4K {}
unsafe impl Pod for BlockQ5K {}
unsafe impl Pod for BlockQ6K {}
unsafe impl Pod for BlockQ8K {}
unsafe impl Pod for u16 {}
unsafe impl Pod for f32 {}

/// Views `bytes` as a slice of blocks. The caller guarantees (and this checks)
/// that the length is a whole number of blocks and the start is aligned.
#[inline]
pub fn view<B: Pod>(bytes: &[u8]) -> &[B] {
    let size = std::mem::size_of::<B>();
    assert!(
        bytes.len().is_multiple_of(size)
            && (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<B>()),
        "block view of {} bytes misaligned or not whole blocks of {size}",
        bytes.len()
    );
    // SAFETY: B is Pod (any bit pattern valid, no padding), the pointer is
    // aligned for B and the length covers exactly len/size blocks.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), bytes.len() / size) }
}

/// Bytes of a slice of blocks (used to build matrices in tests and tools).
pub fn as_bytes<B: Pod>(blocks: &[B]) -> &[u8] {
    // SAFETY: Pod types have no padding, so every byte is initialised.
    unsafe {
        std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), std::mem::size_of_val(blocks))
    }
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K / Q5_K block.
#[inline(always)]
pub fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The sixteen signed 6-bit scales of a Q3_K block.
#[inline(always)]
pub fn q3k_scales(raw: &[u8; 12]) -> [i8; 16] {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let a0 = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let a1 = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
    let tmp = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
    let aux = [
        (a0 & KMASK2) | ((tmp & KMASK1) << 4),
        (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
        ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
        ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
    ];
    let mut out = [0i8; 16];
    for (i, word) in aux.iter().enumerate() {
        for (b, byte) in word.to_le_bytes().iter().enumerate() {
            out[4 * i + b] = (*byte as i8) - 32;
        }
    }
    out
}
