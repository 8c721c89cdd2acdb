//! HPACK's Huffman code for string literals (RFC 7541 §5.2, Appendix B).
//!
//! Decoding steps through the code tree four bits at a time, using a transition table that
//! is computed at compile time. Every code is at least five bits long, so one nibble finishes
//! at most one symbol, and the table is only 256 states (the tree's inner nodes) by 16.

use std::fmt;

/// Why a Huffman-coded string was refused (RFC 7541 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HuffmanError {
    /// The string contains the EOS symbol.
    Eos,
    /// The string ends in more than 7 bits of padding.
    PaddingTooLong,
    /// The string ends in bits that are not all 1s: padding that is not a prefix of EOS, or
    /// a symbol cut short.
    BadPadding,
}

impl fmt::Display for HuffmanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HuffmanError::Eos => "Huffman string contains EOS",
            HuffmanError::PaddingTooLong => "Huffman padding longer than 7 bits",
            HuffmanError::BadPadding => "Huffman padding is not all 1 bits",
        })
    }
}

impl std::error::Error for HuffmanError {}

/// Appends the decoding of `input` to `out`. On error, `out` may hold part of the string.
pub(crate) fn decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), HuffmanError> {
    // The shortest code is 5 bits, so this is an upper bound and `push` never reallocates.
    out.reserve(input.len().saturating_mul(8) / 5);
    let mut state = 0u8;
    for &byte in input {
        state = step(state, byte >> 4, out)?;
        state = step(state, byte & 0x0f, out)?;
    }
    match ENDING[usize::from(state)] {
        Ending::Accept => Ok(()),
        Ending::TooLong => Err(HuffmanError::PaddingTooLong),
        Ending::Reject => Err(HuffmanError::BadPadding),
    }
}

#[inline(always)]
fn step(state: u8, nibble: u8, out: &mut Vec<u8>) -> Result<u8, HuffmanError> {
    let t = TRANSITIONS[usize::from(state)][usize::from(nibble & 0x0f)];
    if t.flags & EMIT != 0 {
        out.push(t.symbol);
    } else if t.flags & FAIL != 0 {
        return Err(HuffmanError::Eos);
    }
    Ok(t.next)
}

/// Appends the Huffman coding of `input` to `out`, padded with 1 bits.
#[cfg(test)]
pub(crate) fn encode(input: &[u8], out: &mut Vec<u8>) {
    out.reserve(encoded_len(input));
    // Holds fewer than 8 pending bits between symbols; a code adds at most 30.
    let mut bits: u64 = 0;
    let mut pending = 0u32;
    for &b in input {
        let (code, len) = CODES[usize::from(b)];
        bits = (bits << len) | u64::from(code);
        pending += u32::from(len);
        while pending >= 8 {
            pending -= 8;
            out.push((bits >> pending) as u8);
        }
    }
    if pending > 0 {
        out.push(((bits << (8 - pending)) as u8) | (0xff >> pending));
    }
}

/// The length in bytes of `encode(input)`.
#[cfg(test)]
pub(crate) fn encoded_len(input: &[u8]) -> usize {
    let bits: usize = input
        .iter()
        .map(|&b| usize::from(CODES[usize::from(b)].1))
        .sum();
    bits.div_ceil(8)
}

const EOS: u16 = 256;
const EMIT: u8 = 1;
const FAIL: u8 = 2;

/// One nibble's move from an inner node of the code tree.
#[derive(Clone, Copy)]
struct Transition {
    next: u8,
    symbol: u8,
    flags: u8,
}

/// What it means for a string to end in a given state.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ending {
    /// At the root, or after at most 7 bits of 1s: valid padding.
    Accept,
    /// After 8 or more 1s: padding longer than the RFC allows.
    TooLong,
    /// Inside a code, off the all-ones path.
    Reject,
}

static TRANSITIONS: [[Transition; 16]; 256] = transitions(&tree());
static ENDING: [Ending; 256] = endings(&tree());

/// A child in `tree()`: an inner node's number, or `LEAF | symbol`.
const LEAF: u16 = 0x8000;

/// The code tree: `[node][bit]` is a child. Node 0 is the root; 257 leaves need 256 inner
/// nodes, so node numbers fit in a `u8`.
const fn tree() -> [[u16; 2]; 256] {
    let mut tree = [[0u16; 2]; 256];
    let mut used = 1;
    let mut sym = 0;
    while sym < CODES.len() {
        let (code, len) = CODES[sym];
        let mut node = 0;
        let mut bit = len - 1;
        while bit > 0 {
            let b = ((code >> bit) & 1) as usize;
            if tree[node][b] == 0 {
                tree[node][b] = used as u16;
                used += 1;
            }
            node = tree[node][b] as usize;
            bit -= 1;
        }
        tree[node][(code & 1) as usize] = LEAF | sym as u16;
        sym += 1;
    }
    // A complete prefix code: no free slot and no node to spare (checked at compile time).
    assert!(used == 256);
    tree
}

const fn transitions(tree: &[[u16; 2]; 256]) -> [[Transition; 16]; 256] {
    let empty = Transition {
        next: 0,
        symbol: 0,
        flags: 0,
    };
    let mut table = [[empty; 16]; 256];
    let mut state = 0;
    while state < 256 {
        let mut nibble = 0;
        while nibble < 16 {
            let mut t = empty;
            let mut node = state;
            let mut i = 4;
            while i > 0 {
                i -= 1;
                let child = tree[node][(nibble >> i) & 1];
                if child & LEAF == 0 {
                    node = child as usize;
                } else if child & !LEAF == EOS {
                    t.flags = FAIL;
                    break;
                } else {
                    t.symbol = (child & !LEAF) as u8;
                    t.flags = EMIT;
                    node = 0;
                }
            }
            t.next = node as u8;
            table[state][nibble] = t;
            nibble += 1;
        }
        state += 1;
    }
    table
}

const fn endings(tree: &[[u16; 2]; 256]) -> [Ending; 256] {
    let mut ending = [Ending::Reject; 256];
    ending[0] = Ending::Accept;
    // Follow the 1 branch from the root; it ends only at EOS's leaf, 30 bits down.
    let mut node = tree[0][1];
    let mut depth = 1;
    while node & LEAF == 0 {
        ending[node as usize] = if depth <= 7 {
            Ending::Accept
        } else {
            Ending::TooLong
        };
        node = tree[node as usize][1];
        depth += 1;
    }
    ending
}

/// The code of each symbol, most significant bit first, and its length in bits
/// (RFC 7541 Appendix B). Index 256 is EOS.
#[rustfmt::skip]
const CODES: [(u32, u8); 257] = [
    (0x1ff8, 13), // 0
    (0x7fffd8, 23), // 1
    (0xfffffe2, 28), // 2
    (0xfffffe3, 28), // 3
    (0xfffffe4, 28), // 4
    (0xfffffe5, 28), // 5
    (0xfffffe6, 28), // 6
    (0xfffffe7, 28), // 7
    (0xfffffe8, 28), // 8
    (0xffffea, 24), // 9
    (0x3ffffffc, 30), // 10
    (0xfffffe9, 28), // 11
    (0xfffffea, 28), // 12
    (0x3ffffffd, 30), // 13
    (0xfffffeb, 28), // 14
    (0xfffffec, 28), // 15
    (0xfffffed, 28), // 16
    (0xfffffee, 28), // 17
    (0xfffffef, 28), // 18
    (0xffffff0, 28), // 19
    (0xffffff1, 28), // 20
    (0xffffff2, 28), // 21
    (0x3ffffffe, 30), // 22
    (0xffffff3, 28), // 23
    (0xffffff4, 28), // 24
    (0xffffff5, 28), // 25
    (0xffffff6, 28), // 26
    (0xffffff7, 28), // 27
    (0xffffff8, 28), // 28
    (0xffffff9, 28), // 29
    (0xffffffa, 28), // 30
    (0xffffffb, 28), // 31
    (0x14, 6), // 32 ' '
    (0x3f8, 10), // 33 '!'
    (0x3f9, 10), // 34 '"'
    (0xffa, 12), // 35 '#'
    (0x1ff9, 13), // 36 '$'
    (0x15, 6), // 37 '%'
    (0xf8, 8), // 38 '&'
    (0x7fa, 11), // 39
    (0x3fa, 10), // 40 '('
    (0x3fb, 10), // 41 ')'
    (0xf9, 8), // 42 '*'
    (0x7fb, 11), // 43 '+'
    (0xfa, 8), // 44 ','
    (0x16, 6), // 45 '-'
    (0x17, 6), // 46 '.'
    (0x18, 6), // 47 '/'
    (0x0, 5), // 48 '0'
    (0x1, 5), // 49 '1'
    (0x2, 5), // 50 '2'
    (0x19, 6), // 51 '3'
    (0x1a, 6), // 52 '4'
    (0x1b, 6), // 53 '5'
    (0x1c, 6), // 54 '6'
    (0x1d, 6), // 55 '7'
    (0x1e, 6), // 56 '8'
    (0x1f, 6), // 57 '9'
    (0x5c, 7), // 58 ':'
    (0xfb, 8), // 59 ';'
    (0x7ffc, 15), // 60 '<'
    (0x20, 6), // 61 '='
    (0xffb, 12), // 62 '>'
    (0x3fc, 10), // 63 '?'
    (0x1ffa, 13), // 64 '@'
    (0x21, 6), // 65 'A'
    (0x5d, 7), // 66 'B'
    (0x5e, 7), // 67 'C'
    (0x5f, 7), // 68 'D'
    (0x60, 7), // 69 'E'
    (0x61, 7), // 70 'F'
    (0x62, 7), // 71 'G'
    (0x63, 7), // 72 'H'
    (0x64, 7), // 73 'I'
    (0x65, 7), // 74 'J'
    (0x66, 7), // 75 'K'
    (0x67, 7), // 76 'L'
    (0x68, 7), // 77 'M'
    (0x69, 7), // 78 'N'
    (0x6a, 7), // 79 'O'
    (0x6b, 7), // 80 'P'
    (0x6c, 7), // 81 'Q'
    (0x6d, 7), // 82 'R'
    (0x6e, 7), // 83 'S'
    (0x6f, 7), // 84 'T'
    (0x70, 7), // 85 'U'
    (0x71, 7), // 86 'V'
    (0x72, 7), // 87 'W'
    (0xfc, 8), // 88 'X'
    (0x73, 7), // 89 'Y'
    (0xfd, 8), // 90 'Z'
    (0x1ffb, 13), // 91 '['
    (0x7fff0, 19), // 92
    (0x1ffc, 13), // 93 ']'
    (0x3ffc, 14), // 94 '^'
    (0x22, 6), // 95 '_'
    (0x7ffd, 15), // 96 '`'
    (0x3, 5), // 97 'a'
    (0x23, 6), // 98 'b'
    (0x4, 5), // 99 'c'
    (0x24, 6), // 100 'd'
    (0x5, 5), // 101 'e'
    (0x25, 6), // 102 'f'
    (0x26, 6), // 103 'g'
    (0x27, 6), // 104 'h'
    (0x6, 5), // 105 'i'
    (0x74, 7), // 106 'j'
    (0x75, 7), // 107 'k'
    (0x28, 6), // 108 'l'
    (0x29, 6), // 109 'm'
    (0x2a, 6), // 110 'n'
    (0x7, 5), // 111 'o'
    (0x2b, 6), // 112 'p'
    (0x76, 7), // 113 'q'
    (0x2c, 6), // 114 'r'
    (0x8, 5), // 115 's'
    (0x9, 5), // 116 't'
    (0x2d, 6), // 117 'u'
    (0x77, 7), // 118 'v'
    (0x78, 7), // 119 'w'
    (0x79, 7), // 120 'x'
    (0x7a, 7), // 121 'y'
    (0x7b, 7), // 122 'z'
    (0x7ffe, 15), // 123 '{'
    (0x7fc, 11), // 124 '|'
    (0x3ffd, 14), // 125 '}'
    (0x1ffd, 13), // 126 '~'
    (0xffffffc, 28), // 127
    (0xfffe6, 20), // 128
    (0x3fffd2, 22), // 129
    (0xfffe7, 20), // 130
    (0xfffe8, 20), // 131
    (0x3fffd3, 22), // 132
    (0x3fffd4, 22), // 133
    (0x3fffd5, 22), // 134
    (0x7fffd9, 23), // 135
    (0x3fffd6, 22), // 136
    (0x7fffda, 23), // 137
    (0x7fffdb, 23), // 138
    (0x7fffdc, 23), // 139
    (0x7fffdd, 23), // 140
    (0x7fffde, 23), // 141
    (0xffffeb, 24), // 142
    (0x7fffdf, 23), // 143
    (0xffffec, 24), // 144
    (0xffffed, 24), // 145
    (0x3fffd7, 22), // 146
    (0x7fffe0, 23), // 147
    (0xffffee, 24), // 148
    (0x7fffe1, 23), // 149
    (0x7fffe2, 23), // 150
    (0x7fffe3, 23), // 151
    (0x7fffe4, 23), // 152
    (0x1fffdc, 21), // 153
    (0x3fffd8, 22), // 154
    (0x7fffe5, 23), // 155
    (0x3fffd9, 22), // 156
    (0x7fffe6, 23), // 157
    (0x7fffe7, 23), // 158
    (0xffffef, 24), // 159
    (0x3fffda, 22), // 160
    (0x1fffdd, 21), // 161
    (0xfffe9, 20), // 162
    (0x3fffdb, 22), // 163
    (0x3fffdc, 22), // 164
    (0x7fffe8, 23), // 165
    (0x7fffe9, 23), // 166
    (0x1fffde, 21), // 167
    (0x7fffea, 23), // 168
    (0x3fffdd, 22), // 169
    (0x3fffde, 22), // 170
    (0xfffff0, 24), // 171
    (0x1fffdf, 21), // 172
    (0x3fffdf, 22), // 173
    (0x7fffeb, 23), // 174
    (0x7fffec, 23), // 175
    (0x1fffe0, 21), // 176
    (0x1fffe1, 21), // 177
    (0x3fffe0, 22), // 178
    (0x1fffe2, 21), // 179
    (0x7fffed, 23), // 180
    (0x3fffe1, 22), // 181
    (0x7fffee, 23), // 182
    (0x7fffef, 23), // 183
    (0xfffea, 20), // 184
    (0x3fffe2, 22), // 185
    (0x3fffe3, 22), // 186
    (0x3fffe4, 22), // 187
    (0x7ffff0, 23), // 188
    (0x3fffe5, 22), // 189
    (0x3fffe6, 22), // 190
    (0x7ffff1, 23), // 191
    (0x3ffffe0, 26), // 192
    (0x3ffffe1, 26), // 193
    (0xfffeb, 20), // 194
    (0x7fff1, 19), // 195
    (0x3fffe7, 22), // 196
    (0x7ffff2, 23), // 197
    (0x3fffe8, 22), // 198
    (0x1ffffec, 25), // 199
    (0x3ffffe2, 26), // 200
    (0x3ffffe3, 26), // 201
    (0x3ffffe4, 26), // 202
    (0x7ffffde, 27), // 203
    (0x7ffffdf, 27), // 204
    (0x3ffffe5, 26), // 205
    (0xfffff1, 24), // 206
    (0x1ffffed, 25), // 207
    (0x7fff2, 19), // 208
    (0x1fffe3, 21), // 209
    (0x3ffffe6, 26), // 210
    (0x7ffffe0, 27), // 211
    (0x7ffffe1, 27), // 212
    (0x3ffffe7, 26), // 213
    (0x7ffffe2, 27), // 214
    (0xfffff2, 24), // 215
    (0x1fffe4, 21), // 216
    (0x1fffe5, 21), // 217
    (0x3ffffe8, 26), // 218
    (0x3ffffe9, 26), // 219
    (0xffffffd, 28), // 220
    (0x7ffffe3, 27), // 221
    (0x7ffffe4, 27), // 222
    (0x7ffffe5, 27), // 223
    (0xfffec, 20), // 224
    (0xfffff3, 24), // 225
    (0xfffed, 20), // 226
    (0x1fffe6, 21), // 227
    (0x3fffe9, 22), // 228
    (0x1fffe7, 21), // 229
    (0x1fffe8, 21), // 230
    (0x7ffff3, 23), // 231
    (0x3fffea, 22), // 232
    (0x3fffeb, 22), // 233
    (0x1ffffee, 25), // 234
    (0x1ffffef, 25), // 235
    (0xfffff4, 24), // 236
    (0xfffff5, 24), // 237
    (0x3ffffea, 26), // 238
    (0x7ffff4, 23), // 239
    (0x3ffffeb, 26), // 240
    (0x7ffffe6, 27), // 241
    (0x3ffffec, 26), // 242
    (0x3ffffed, 26), // 243
    (0x7ffffe7, 27), // 244
    (0x7ffffe8, 27), // 245
    (0x7ffffe9, 27), // 246
    (0x7ffffea, 27), // 247
    (0x7ffffeb, 27), // 248
    (0xffffffe, 28), // 249
    (0x7ffffec, 27), // 250
    (0x7ffffed, 27), // 251
    (0x7ffffee, 27), // 252
    (0x7ffffef, 27), // 253
    (0x7fffff0, 27), // 254
    (0x3ffffee, 26), // 255
    (0x3fffffff, 30), // 256 EOS
];

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    fn decoded(input: &[u8]) -> Result<Vec<u8>, HuffmanError> {
        let mut out = Vec::new();
        decode(input, &mut out).map(|()| out)
    }

    /// A transcription slip in `CODES` would break these: Appendix B is a canonical code
    /// (codes of one length are consecutive, in symbol order, and each length starts where
    /// the previous one left off) that fills the code space exactly.
    #[test]
    fn the_table_is_the_canonical_code_of_appendix_b() {
        let mut order: Vec<usize> = (0..CODES.len()).collect();
        order.sort_by_key(|&s| (CODES[s].1, s));
        let mut expected: u64 = 0;
        let mut prev_len = CODES[order[0]].1;
        for (i, &s) in order.iter().enumerate() {
            let (code, len) = CODES[s];
            if i > 0 {
                expected = (expected + 1) << (len - prev_len);
            }
            assert_eq!(u64::from(code), expected, "symbol {s}");
            assert!(u64::from(code) < 1 << len, "symbol {s}");
            prev_len = len;
        }
        let kraft: u64 = CODES.iter().map(|&(_, len)| 1u64 << (30 - len)).sum();
        assert_eq!(kraft, 1 << 30);
        assert_eq!(CODES[256], (0x3fff_ffff, 30));
        assert_eq!(CODES[usize::from(b'a')], (0x3, 5));
        assert_eq!(CODES[usize::from(b' ')], (0x14, 6));
    }

    /// The Huffman strings of RFC 7541 Appendix C.4 and C.6.
    const RFC_STRINGS: &[(&str, &str)] = &[
        ("www.example.com", "f1e3 c2e5 f23a 6ba0 ab90 f4ff"),
        ("no-cache", "a8eb 1064 9cbf"),
        ("custom-key", "25a8 49e9 5ba9 7d7f"),
        ("custom-value", "25a8 49e9 5bb8 e8b4 bf"),
        ("302", "6402"),
        ("307", "640e ff"),
        ("private", "aec3 771a 4b"),
        (
            "Mon, 21 Oct 2013 20:13:21 GMT",
            "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff",
        ),
        (
            "Mon, 21 Oct 2013 20:13:22 GMT",
            "d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff",
        ),
        (
            "https://www.example.com",
            "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3",
        ),
        ("gzip", "9bd9 ab"),
        (
            "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
            "94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 \
             ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
        ),
    ];

    #[test]
    fn decodes_the_rfc_examples() {
        for &(text, code) in RFC_STRINGS {
            assert_eq!(decoded(&hex(code)).unwrap(), text.as_bytes(), "{text}");
        }
    }

    #[test]
    fn encodes_the_rfc_examples() {
        for &(text, code) in RFC_STRINGS {
            let mut out = Vec::new();
            encode(text.as_bytes(), &mut out);
            assert_eq!(out, hex(code), "{text}");
            assert_eq!(encoded_len(text.as_bytes()), out.len(), "{text}");
        }
    }

    #[test]
    fn every_byte_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        // Each byte alone (each ending differently padded), then all in a row, forwards and
        // backwards.
        for b in 0..=255u8 {
            let mut code = Vec::new();
            encode(&[b], &mut code);
            assert_eq!(decoded(&code).unwrap(), [b], "byte {b}");
        }
        for input in [all.clone(), all.iter().rev().copied().collect()] {
            let mut code = Vec::new();
            encode(&input, &mut code);
            assert_eq!(code.len(), encoded_len(&input));
            assert_eq!(decoded(&code).unwrap(), input);
        }
    }

    #[test]
    fn decode_appends() {
        let mut out = b"x".to_vec();
        decode(&hex("6402"), &mut out).unwrap();
        assert_eq!(out, b"x302");
        assert_eq!(decoded(&[]).unwrap(), b"");
    }

    #[test]
    fn rejects_eos() {
        // EOS alone (30 ones, then two bits of padding).
        assert_eq!(decoded(&[0xff; 4]), Err(HuffmanError::Eos));
        // 'a' (00011) then EOS.
        assert_eq!(
            decoded(&[0x1f, 0xff, 0xff, 0xff, 0xff]),
            Err(HuffmanError::Eos)
        );
        // EOS in the middle of a string: "0" (00000), EOS, "0" (00000); 40 bits.
        assert_eq!(
            decoded(&[0x07, 0xff, 0xff, 0xff, 0xe0]),
            Err(HuffmanError::Eos)
        );
    }

    #[test]
    fn rejects_padding_that_is_not_ones() {
        // 'a' (00011) padded with 000.
        assert_eq!(decoded(&[0x18]), Err(HuffmanError::BadPadding));
        // 'a' padded with 101.
        assert_eq!(decoded(&[0x1d]), Err(HuffmanError::BadPadding));
        // A cut-off code: 11111110 is a prefix of a 13-bit code, not of EOS.
        assert_eq!(decoded(&[0xfe]), Err(HuffmanError::BadPadding));
        // The valid 'a' + 111, as a control.
        assert_eq!(decoded(&[0x1f]).unwrap(), b"a");
    }

    #[test]
    fn rejects_padding_over_seven_bits() {
        assert_eq!(decoded(&[0xff]), Err(HuffmanError::PaddingTooLong));
        // 'a' then 11 ones.
        assert_eq!(decoded(&[0x1f, 0xff]), Err(HuffmanError::PaddingTooLong));
        // Seven "0"s (5 zero bits each), then 29 ones: one short of EOS.
        assert_eq!(
            decoded(&[0, 0, 0, 0, 0x1f, 0xff, 0xff, 0xff]),
            Err(HuffmanError::PaddingTooLong)
        );
    }
}
