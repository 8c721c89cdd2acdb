//! HPACK (RFC 7541): a decoder for the peer's header blocks, with the dynamic table, and an
//! encoder for ours that never indexes, so it keeps no state and never has to announce a
//! table size.

use std::collections::VecDeque;
use std::fmt;

use super::huffman::{self, HuffmanError};

/// Why a header block was refused. Every one is a connection error of type
/// COMPRESSION_ERROR (RFC 9113 §4.3); the detail is for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HpackError {
    /// The block ends inside a representation.
    Truncated,
    /// An integer above `u32::MAX`, or with more continuation bytes than that needs.
    IntegerOverflow,
    /// Index 0, or an index past the end of the static and dynamic tables.
    InvalidIndex(usize),
    /// A dynamic table size update above our SETTINGS_HEADER_TABLE_SIZE.
    SizeUpdateTooLarge {
        /// The size asked for.
        size: usize,
        /// Our limit.
        limit: usize,
    },
    /// A dynamic table size update after a header field (RFC 7541 §4.2).
    LateSizeUpdate,
    /// A Huffman-coded string that does not decode.
    Huffman(HuffmanError),
}

impl fmt::Display for HpackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HpackError::Truncated => f.write_str("header block truncated"),
            HpackError::IntegerOverflow => f.write_str("HPACK integer overflows"),
            HpackError::InvalidIndex(i) => write!(f, "HPACK index {i} is not in the tables"),
            HpackError::SizeUpdateTooLarge { size, limit } => {
                write!(f, "dynamic table size update to {size} exceeds {limit}")
            }
            HpackError::LateSizeUpdate => {
                f.write_str("dynamic table size update after a header field")
            }
            HpackError::Huffman(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for HpackError {}

impl From<HuffmanError> for HpackError {
    fn from(e: HuffmanError) -> Self {
        HpackError::Huffman(e)
    }
}

/// The static table (RFC 7541 Appendix A); HPACK index `i` is `STATIC_TABLE[i - 1]`.
pub(crate) static STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// Per-entry overhead in the table size (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

/// Continuation bytes enough for any `u32` after the smallest (1-bit) prefix: 5 × 7 bits.
const MAX_CONTINUATION_BYTES: u32 = 5;

/// Decodes the header blocks of one connection's direction; the dynamic table carries over
/// from block to block.
#[derive(Debug)]
pub(crate) struct Decoder {
    table: Table,
    /// Our SETTINGS_HEADER_TABLE_SIZE: the most a size update may ask for.
    limit: usize,
    /// Huffman output for the field being decoded, reused so that it stops allocating once
    /// it has grown to the connection's longest field.
    scratch: Vec<u8>,
}

impl Decoder {
    /// A decoder whose table starts at, and may never exceed, `max_size`: the
    /// SETTINGS_HEADER_TABLE_SIZE we announce (4096 unless we announce otherwise).
    pub(crate) fn new(max_size: usize) -> Self {
        Decoder {
            table: Table::new(max_size),
            limit: max_size,
            scratch: Vec::new(),
        }
    }

    /// Decodes one complete header block (HEADERS plus any CONTINUATION payloads, joined),
    /// calling `emit(name, value)` for each field in order (a closure or a `dyn FnMut`; the
    /// slices are valid only during the call). On error the table may hold part of the
    /// block's changes; the connection must end anyway.
    pub(crate) fn decode<F: FnMut(&[u8], &[u8]) + ?Sized>(
        &mut self,
        block: &[u8],
        emit: &mut F,
    ) -> Result<(), HpackError> {
        let mut r = Reader { buf: block, pos: 0 };
        let mut seen_field = false;
        while let Some(first) = r.next() {
            if first & 0x80 != 0 {
                // §6.1 Indexed Header Field.
                let index = r.integer(first, 7)?;
                let (name, value) = self.field(index)?;
                emit(name, value);
            } else if first & 0x40 != 0 {
                // §6.2.1 Literal Header Field with Incremental Indexing.
                self.literal(&mut r, first, 6, true, emit)?;
            } else if first & 0x20 != 0 {
                // §6.3 Dynamic Table Size Update.
                if seen_field {
                    return Err(HpackError::LateSizeUpdate);
                }
                let size = r.integer(first, 5)?;
                if size > self.limit {
                    return Err(HpackError::SizeUpdateTooLarge {
                        size,
                        limit: self.limit,
                    });
                }
                self.table.set_max_size(size);
                continue;
            } else {
                // §6.2.2 without indexing (0000) and §6.2.3 never indexed (0001): the same to
                // a decoder that forwards nothing.
                self.literal(&mut r, first, 4, false, emit)?;
            }
            seen_field = true;
        }
        Ok(())
    }

    /// The field at HPACK index `index` (static table first, then dynamic, newest first).
    fn field(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        match index {
            0 => Err(HpackError::InvalidIndex(0)),
            1..=61 => Ok(STATIC_TABLE[index - 1]),
            _ => self
                .table
                .get(index - 62)
                .ok_or(HpackError::InvalidIndex(index)),
        }
    }

    fn literal<F: FnMut(&[u8], &[u8]) + ?Sized>(
        &mut self,
        r: &mut Reader<'_>,
        first: u8,
        prefix: u32,
        add: bool,
        emit: &mut F,
    ) -> Result<(), HpackError> {
        let index = r.integer(first, prefix)?;
        self.scratch.clear();
        let name = if index == 0 {
            Some(r.string(&mut self.scratch)?)
        } else {
            // Checked now so that the error is the index, not whatever follows it.
            self.field(index)?;
            None
        };
        let value = r.string(&mut self.scratch)?;

        let value = value.get(&self.scratch);
        match name {
            Some(name) => {
                let name = name.get(&self.scratch);
                emit(name, value);
                if add {
                    self.table.insert(Name::Bytes(name), value);
                }
            }
            None => {
                let (name, _) = self.field(index)?;
                emit(name, value);
                if add {
                    let name = match index.checked_sub(62) {
                        // The name lives in the table, which the insertion may evict.
                        Some(entry) => Name::Entry(entry),
                        None => Name::Bytes(STATIC_TABLE[index - 1].0),
                    };
                    self.table.insert(name, value);
                }
            }
        }
        Ok(())
    }
}

/// Where a decoded string is: in the block, or (Huffman-decoded) in the scratch buffer.
enum Str<'a> {
    Raw(&'a [u8]),
    Scratch(usize, usize),
}

impl<'a> Str<'a> {
    fn get<'s>(&self, scratch: &'s [u8]) -> &'s [u8]
    where
        'a: 's,
    {
        match *self {
            Str::Raw(s) => s,
            Str::Scratch(start, end) => &scratch[start..end],
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn next(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    /// An integer with a `prefix`-bit prefix whose first byte is `first` (§5.1).
    fn integer(&mut self, first: u8, prefix: u32) -> Result<usize, HpackError> {
        let max = (1u32 << prefix) - 1;
        let low = u32::from(first) & max;
        if low < max {
            return Ok(low as usize);
        }
        let mut value = u64::from(low);
        for i in 0..MAX_CONTINUATION_BYTES {
            let b = self.next().ok_or(HpackError::Truncated)?;
            value += u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return u32::try_from(value)
                    .ok()
                    .and_then(|v| usize::try_from(v).ok())
                    .ok_or(HpackError::IntegerOverflow);
            }
        }
        Err(HpackError::IntegerOverflow)
    }

    /// A string literal (§5.2); Huffman-coded ones are decoded onto the end of `scratch`.
    fn string(&mut self, scratch: &mut Vec<u8>) -> Result<Str<'a>, HpackError> {
        let first = self.next().ok_or(HpackError::Truncated)?;
        let len = self.integer(first, 7)?;
        let bytes = self
            .buf
            .get(self.pos..)
            .and_then(|rest| rest.get(..len))
            .ok_or(HpackError::Truncated)?;
        self.pos += len;
        if first & 0x80 == 0 {
            return Ok(Str::Raw(bytes));
        }
        let start = scratch.len();
        huffman::decode(bytes, scratch)?;
        Ok(Str::Scratch(start, scratch.len()))
    }
}

/// The name of an entry to insert: given, or that of a dynamic table entry (0 = newest).
enum Name<'a> {
    Bytes(&'a [u8]),
    Entry(usize),
}

/// The dynamic table (RFC 7541 §2.3.2, §4).
///
/// Names and values sit back to back in one byte buffer, oldest first; `entries` locates
/// them, newest first. Evicting only forgets an entry's span; the dead bytes at the front
/// are dropped when an insertion would otherwise outgrow the buffer. Live bytes never exceed
/// the table's maximum size, so a buffer of twice that size always has room after the drop
/// and never reallocates, and a drop (moving at most one table's worth of bytes) comes only
/// after at least a table's worth has been inserted since the last one.
#[derive(Debug)]
struct Table {
    bytes: Vec<u8>,
    entries: VecDeque<Entry>,
    /// Sum of the entries' sizes (§4.1).
    size: usize,
    max_size: usize,
    /// The buffer's fixed capacity: twice the largest size the table may be given.
    room: usize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    start: usize,
    name_len: usize,
    value_len: usize,
}

impl Entry {
    fn size(&self) -> usize {
        self.name_len + self.value_len + ENTRY_OVERHEAD
    }
}

impl Table {
    fn new(max_size: usize) -> Self {
        let room = max_size.saturating_mul(2);
        Table {
            bytes: Vec::with_capacity(room),
            // Every entry takes at least 32 bytes of the size.
            entries: VecDeque::with_capacity(max_size / ENTRY_OVERHEAD),
            size: 0,
            max_size,
            room,
        }
    }

    /// Entry `i`, newest first.
    fn get(&self, i: usize) -> Option<(&[u8], &[u8])> {
        let e = self.entries.get(i)?;
        let field = &self.bytes[e.start..e.start + e.name_len + e.value_len];
        Some(field.split_at(e.name_len))
    }

    fn set_max_size(&mut self, max_size: usize) {
        self.max_size = max_size;
        self.evict_to(max_size);
        if self.entries.is_empty() {
            self.bytes.clear();
        }
    }

    fn insert(&mut self, name: Name<'_>, value: &[u8]) {
        let name_len = match name {
            Name::Bytes(n) => n.len(),
            Name::Entry(i) => self.entries.get(i).map_or(0, |e| e.name_len),
        };
        let size = name_len + value.len() + ENTRY_OVERHEAD;
        if size > self.max_size {
            // §4.4: not an error; the table just ends up empty.
            self.entries.clear();
            self.size = 0;
            self.bytes.clear();
            return;
        }
        if self.bytes.len() + name_len + value.len() > self.room {
            self.drop_dead_bytes();
        }
        // Copy before evicting: the name may be in an entry that this insertion evicts, and
        // eviction leaves its bytes in place.
        let start = self.bytes.len();
        match name {
            Name::Bytes(n) => self.bytes.extend_from_slice(n),
            Name::Entry(i) => {
                if let Some(e) = self.entries.get(i) {
                    self.bytes.extend_from_within(e.start..e.start + e.name_len);
                }
            }
        }
        self.bytes.extend_from_slice(value);
        self.evict_to(self.max_size - size);
        self.entries.push_front(Entry {
            start,
            name_len,
            value_len: value.len(),
        });
        self.size += size;
    }

    /// Evicts the oldest entries until the table's size is at most `size`.
    fn evict_to(&mut self, size: usize) {
        while self.size > size {
            match self.entries.pop_back() {
                Some(e) => self.size -= e.size(),
                None => break,
            }
        }
    }

    fn drop_dead_bytes(&mut self) {
        let dead = self.entries.back().map_or(self.bytes.len(), |e| e.start);
        self.bytes.drain(..dead);
        for e in &mut self.entries {
            e.start -= dead;
        }
    }
}

/// Appends `name: value` as a literal header field without indexing (§6.2.2), with the
/// static table's index for the name when it has one, and both strings raw. `name` must
/// already be lowercase.
pub(crate) fn encode_field(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    match STATIC_TABLE.iter().position(|&(n, _)| n == name) {
        Some(i) => encode_integer(i + 1, 4, 0x00, out),
        None => {
            out.push(0x00);
            encode_string(name, out);
        }
    }
    encode_string(value, out);
}

/// Appends `:status: status`: one byte for the statuses in the static table, else a literal
/// without indexing on the static name.
pub(crate) fn encode_status(status: u16, out: &mut Vec<u8>) {
    let index = match status {
        200 => 8,
        204 => 9,
        206 => 10,
        304 => 11,
        400 => 12,
        404 => 13,
        500 => 14,
        _ => {
            let mut digits = [0u8; 5];
            let mut n = status;
            let mut start = digits.len();
            loop {
                start -= 1;
                digits[start] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            out.push(0x08);
            encode_string(&digits[start..], out);
            return;
        }
    };
    out.push(0x80 | index);
}

fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    encode_integer(s.len(), 7, 0x00, out);
    out.extend_from_slice(s);
}

/// Appends `value` as an integer with a `prefix`-bit prefix (§5.1); `flags` holds the bits
/// above the prefix in the first byte.
fn encode_integer(value: usize, prefix: u32, flags: u8, out: &mut Vec<u8>) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

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

    fn text(b: &[u8]) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    fn decode(d: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, HpackError> {
        let mut fields = Vec::new();
        d.decode(block, &mut |n, v| fields.push((text(n), text(v))))?;
        Ok(fields)
    }

    fn fields(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|&(n, v)| (n.to_owned(), v.to_owned()))
            .collect()
    }

    /// The dynamic table, newest first, after checking that its size is the sum of its
    /// entries' sizes.
    fn table(d: &Decoder) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut size = 0;
        for i in 0..d.table.entries.len() {
            let (n, v) = d.table.get(i).unwrap();
            size += n.len() + v.len() + 32;
            out.push((text(n), text(v)));
        }
        assert_eq!(size, d.table.size);
        assert!(d.table.size <= d.table.max_size);
        out
    }

    fn read_integer(bytes: &[u8], prefix: u32) -> Result<usize, HpackError> {
        let mut r = Reader { buf: bytes, pos: 1 };
        let v = r.integer(bytes[0], prefix)?;
        assert_eq!(r.pos, bytes.len(), "bytes left over");
        Ok(v)
    }

    fn written_integer(value: usize, prefix: u32, flags: u8) -> Vec<u8> {
        let mut out = Vec::new();
        encode_integer(value, prefix, flags, &mut out);
        out
    }

    #[test]
    fn c1_integers() {
        // C.1.1: 10 on a 5-bit prefix (with 3 flag bits set, which must be ignored).
        assert_eq!(written_integer(10, 5, 0xe0), [0xea]);
        assert_eq!(read_integer(&[0xea], 5), Ok(10));
        // C.1.2: 1337 on a 5-bit prefix.
        assert_eq!(written_integer(1337, 5, 0), [0x1f, 0x9a, 0x0a]);
        assert_eq!(read_integer(&[0x1f, 0x9a, 0x0a], 5), Ok(1337));
        // C.1.3: 42 at an octet boundary.
        assert_eq!(written_integer(42, 8, 0), [0x2a]);
        assert_eq!(read_integer(&[0x2a], 8), Ok(42));
    }

    #[test]
    fn integer_edges() {
        // The prefix's maximum needs a continuation byte of 0.
        assert_eq!(written_integer(31, 5, 0), [0x1f, 0x00]);
        assert_eq!(read_integer(&[0x1f, 0x00], 5), Ok(31));
        for prefix in 1..=8 {
            let max = u32::MAX as usize;
            assert_eq!(
                read_integer(&written_integer(max, prefix, 0), prefix),
                Ok(max)
            );
            assert_eq!(
                read_integer(&written_integer(max + 1, prefix, 0), prefix),
                Err(HpackError::IntegerOverflow),
                "prefix {prefix}"
            );
        }
        // Padded with zero continuation bytes, still within five: accepted.
        assert_eq!(
            read_integer(&[0x1f, 0x81, 0x80, 0x80, 0x80, 0x00], 5),
            Ok(32)
        );
        // Six continuation bytes, whatever the value.
        assert_eq!(
            read_integer(&[0x1f, 0x81, 0x80, 0x80, 0x80, 0x80, 0x00], 5),
            Err(HpackError::IntegerOverflow)
        );
        // 2^32 + 126 in five continuation bytes.
        assert_eq!(
            read_integer(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0x0f], 7),
            Err(HpackError::IntegerOverflow)
        );
    }

    #[test]
    fn c2_1_literal_with_indexing() {
        let mut d = Decoder::new(4096);
        let block = hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572");
        let got = decode(&mut d, &block).unwrap();
        assert_eq!(got, fields(&[("custom-key", "custom-header")]));
        assert_eq!(table(&d), fields(&[("custom-key", "custom-header")]));
        assert_eq!(d.table.size, 55);
    }

    #[test]
    fn c2_2_literal_without_indexing() {
        let mut d = Decoder::new(4096);
        let got = decode(&mut d, &hex("040c 2f73 616d 706c 652f 7061 7468")).unwrap();
        assert_eq!(got, fields(&[(":path", "/sample/path")]));
        assert_eq!(table(&d), []);
    }

    #[test]
    fn c2_3_literal_never_indexed() {
        let mut d = Decoder::new(4096);
        let block = hex("1008 7061 7373 776f 7264 0673 6563 7265 74");
        let got = decode(&mut d, &block).unwrap();
        assert_eq!(got, fields(&[("password", "secret")]));
        assert_eq!(table(&d), []);
    }

    #[test]
    fn c2_4_indexed() {
        let mut d = Decoder::new(4096);
        assert_eq!(
            decode(&mut d, &[0x82]).unwrap(),
            fields(&[(":method", "GET")])
        );
        assert_eq!(table(&d), []);
    }

    const REQUEST_1: &[(&str, &str)] = &[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
    ];
    const REQUEST_2: &[(&str, &str)] = &[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
        ("cache-control", "no-cache"),
    ];
    const REQUEST_3: &[(&str, &str)] = &[
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/index.html"),
        (":authority", "www.example.com"),
        ("custom-key", "custom-value"),
    ];

    /// Decodes consecutive blocks on one decoder, checking the fields, the table and its
    /// size after each.
    #[allow(clippy::type_complexity)]
    fn run(limit: usize, steps: &[(&str, &[(&str, &str)], &[(&str, &str)], usize)]) {
        let mut d = Decoder::new(limit);
        for (i, &(block, expect, expect_table, size)) in steps.iter().enumerate() {
            let got = decode(&mut d, &hex(block)).unwrap();
            assert_eq!(got, fields(expect), "block {i}");
            assert_eq!(table(&d), fields(expect_table), "table after block {i}");
            assert_eq!(d.table.size, size, "size after block {i}");
        }
    }

    #[test]
    fn c3_requests_without_huffman() {
        run(
            4096,
            &[
                (
                    "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                    REQUEST_1,
                    &[(":authority", "www.example.com")],
                    57,
                ),
                (
                    "8286 84be 5808 6e6f 2d63 6163 6865",
                    REQUEST_2,
                    &[
                        ("cache-control", "no-cache"),
                        (":authority", "www.example.com"),
                    ],
                    110,
                ),
                (
                    "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
                    REQUEST_3,
                    &[
                        ("custom-key", "custom-value"),
                        ("cache-control", "no-cache"),
                        (":authority", "www.example.com"),
                    ],
                    164,
                ),
            ],
        );
    }

    #[test]
    fn c4_requests_with_huffman() {
        run(
            4096,
            &[
                (
                    "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
                    REQUEST_1,
                    &[(":authority", "www.example.com")],
                    57,
                ),
                (
                    "8286 84be 5886 a8eb 1064 9cbf",
                    REQUEST_2,
                    &[
                        ("cache-control", "no-cache"),
                        (":authority", "www.example.com"),
                    ],
                    110,
                ),
                (
                    "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
                    REQUEST_3,
                    &[
                        ("custom-key", "custom-value"),
                        ("cache-control", "no-cache"),
                        (":authority", "www.example.com"),
                    ],
                    164,
                ),
            ],
        );
    }

    const DATE_1: &str = "Mon, 21 Oct 2013 20:13:21 GMT";
    const DATE_2: &str = "Mon, 21 Oct 2013 20:13:22 GMT";
    const LOCATION: &str = "https://www.example.com";
    const COOKIE: &str = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";

    #[allow(clippy::type_complexity)]
    fn responses(blocks: [&str; 3]) -> [(&str, &[(&str, &str)], &[(&str, &str)], usize); 3] {
        [
            (
                blocks[0],
                &[
                    (":status", "302"),
                    ("cache-control", "private"),
                    ("date", DATE_1),
                    ("location", LOCATION),
                ],
                &[
                    ("location", LOCATION),
                    ("date", DATE_1),
                    ("cache-control", "private"),
                    (":status", "302"),
                ],
                222,
            ),
            (
                blocks[1],
                &[
                    (":status", "307"),
                    ("cache-control", "private"),
                    ("date", DATE_1),
                    ("location", LOCATION),
                ],
                &[
                    (":status", "307"),
                    ("location", LOCATION),
                    ("date", DATE_1),
                    ("cache-control", "private"),
                ],
                222,
            ),
            (
                blocks[2],
                &[
                    (":status", "200"),
                    ("cache-control", "private"),
                    ("date", DATE_2),
                    ("location", LOCATION),
                    ("content-encoding", "gzip"),
                    ("set-cookie", COOKIE),
                ],
                &[
                    ("set-cookie", COOKIE),
                    ("content-encoding", "gzip"),
                    ("date", DATE_2),
                ],
                215,
            ),
        ]
    }

    #[test]
    fn c5_responses_without_huffman() {
        run(
            256,
            &responses([
                "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 \
                 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 \
                 6c65 2e63 6f6d",
                "4803 3330 37c1 c0bf",
                "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d \
                 54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 \
                 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e \
                 3d31",
            ]),
        );
    }

    #[test]
    fn c6_responses_with_huffman() {
        run(
            256,
            &responses([
                "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 \
                 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
                "4883 640e ffc1 c0bf",
                "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab \
                 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f \
                 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
            ]),
        );
    }

    #[test]
    fn static_table_is_appendix_a() {
        assert_eq!(STATIC_TABLE.len(), 61);
        let mut d = Decoder::new(4096);
        let block: Vec<u8> = (1..=61).map(|i| 0x80 | i).collect();
        let got = decode(&mut d, &block).unwrap();
        assert_eq!(got[0], (":authority".to_owned(), String::new()));
        assert_eq!(got[15], ("accept-encoding".into(), "gzip, deflate".into()));
        assert_eq!(got[30], ("content-type".into(), String::new()));
        assert_eq!(got[60], ("www-authenticate".into(), String::new()));
        assert!(
            got.iter()
                .all(|(n, _)| n.bytes().all(|b| !b.is_ascii_uppercase()))
        );
    }

    #[test]
    fn encoded_fields_round_trip() {
        let long = "v".repeat(300);
        let long_name = "x-".repeat(100);
        let list = [
            ("content-type", "application/grpc"),
            (
                ":path",
                "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
            ),
            ("www-authenticate", "Basic"),
            ("grpc-status", "0"),
            ("grpc-message", ""),
            ("content-type", ""),
            ("x-long", long.as_str()),
            (long_name.as_str(), "n"),
            ("user-agent", long.as_str()),
        ];
        let mut block = Vec::new();
        for (n, v) in list {
            encode_field(n.as_bytes(), v.as_bytes(), &mut block);
        }
        let mut d = Decoder::new(4096);
        assert_eq!(decode(&mut d, &block).unwrap(), fields(&list));
        assert_eq!(table(&d), [], "the encoder never indexes");
    }

    #[test]
    fn encoded_field_shapes() {
        let mut out = Vec::new();
        // content-type is static index 31: 4-bit prefix 15, then 16.
        encode_field(b"content-type", b"application/grpc", &mut out);
        assert_eq!(&out[..3], [0x0f, 0x10, 16]);
        out.clear();
        encode_field(b":path", b"/", &mut out);
        assert_eq!(out, [0x04, 0x01, b'/']);
        out.clear();
        encode_field(b"grpc-status", b"0", &mut out);
        assert_eq!(out, b"\x00\x0bgrpc-status\x010");
    }

    #[test]
    fn encoded_statuses() {
        for (status, byte) in [
            (200, 0x88),
            (204, 0x89),
            (206, 0x8a),
            (304, 0x8b),
            (400, 0x8c),
            (404, 0x8d),
            (500, 0x8e),
        ] {
            let mut out = Vec::new();
            encode_status(status, &mut out);
            assert_eq!(out, [byte], "{status}");
        }
        let mut out = Vec::new();
        encode_status(429, &mut out);
        assert_eq!(out, b"\x08\x03429");
        for status in [100, 200, 302, 429, 503, 999, 7, 65535] {
            let mut out = Vec::new();
            encode_status(status, &mut out);
            let got = decode(&mut Decoder::new(0), &out).unwrap();
            assert_eq!(got, fields(&[(":status", &status.to_string())]));
        }
    }

    fn error(limit: usize, block: &[u8]) -> HpackError {
        decode(&mut Decoder::new(limit), block).unwrap_err()
    }

    #[test]
    fn rejects_bad_indexes() {
        assert_eq!(error(4096, &[0x80]), HpackError::InvalidIndex(0));
        assert_eq!(error(4096, &[0xbe]), HpackError::InvalidIndex(62));
        // A name index past the end, in each literal form.
        assert_eq!(error(4096, &[0x7e, 0x00]), HpackError::InvalidIndex(62));
        assert_eq!(
            error(4096, &[0x0f, 0x2f, 0x00]),
            HpackError::InvalidIndex(62)
        );
        assert_eq!(
            error(4096, &[0x1f, 0x30, 0x00]),
            HpackError::InvalidIndex(63)
        );
        // One past a one-entry table.
        let mut d = Decoder::new(4096);
        decode(&mut d, &hex("4001 6101 62")).unwrap();
        assert_eq!(decode(&mut d, &[0xbe]).unwrap(), fields(&[("a", "b")]));
        assert_eq!(decode(&mut d, &[0xbf]), Err(HpackError::InvalidIndex(63)));
    }

    #[test]
    fn rejects_truncation() {
        for block in [
            &[0xff][..],               // indexed, continuation missing
            &[0xff, 0x80],             // continuation cut short
            &[0x40],                   // name length missing
            &[0x40, 0x05, b'a', b'b'], // name cut short
            &[0x40, 0x01, b'a'],       // value missing
            &[0x04],                   // value missing after an indexed name
            &[0x04, 0x83, 0x64],       // Huffman value cut short
            &[0x04, 0x7f],             // value length cut short
            &[0x3f],                   // size update cut short
        ] {
            assert_eq!(error(4096, block), HpackError::Truncated, "{block:x?}");
        }
    }

    #[test]
    fn rejects_overflowing_integers() {
        let huge = [0xff, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert_eq!(error(4096, &huge), HpackError::IntegerOverflow);
        let mut string_len = vec![0x04];
        string_len.extend_from_slice(&huge);
        assert_eq!(error(4096, &string_len), HpackError::IntegerOverflow);
    }

    #[test]
    fn size_updates() {
        assert_eq!(
            error(256, &written_integer(257, 5, 0x20)),
            HpackError::SizeUpdateTooLarge {
                size: 257,
                limit: 256
            }
        );
        assert_eq!(error(4096, &[0x82, 0x20]), HpackError::LateSizeUpdate);
        assert_eq!(
            error(4096, &hex("4001 6101 6220")),
            HpackError::LateSizeUpdate
        );

        let mut d = Decoder::new(256);
        // Two updates in a row at the start are allowed (§4.2), the limit itself too.
        let mut block = vec![0x20];
        encode_integer(256, 5, 0x20, &mut block);
        block.push(0x82);
        assert_eq!(
            decode(&mut d, &block).unwrap(),
            fields(&[(":method", "GET")])
        );
        assert_eq!(d.table.max_size, 256);
        // Updates at the start of a later block are fine too.
        decode(&mut d, &hex("4001 6101 62")).unwrap();
        decode(&mut d, &hex("3f11 4001 6301 64")).unwrap(); // max 48: one entry left
        assert_eq!(table(&d), fields(&[("c", "d")]));
    }

    #[test]
    fn size_update_to_zero_empties_the_table() {
        let mut d = Decoder::new(4096);
        assert_eq!(decode(&mut d, &[]).unwrap(), []);
        decode(
            &mut d,
            &hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"),
        )
        .unwrap();
        decode(&mut d, &hex("8286 84be 5808 6e6f 2d63 6163 6865")).unwrap();
        assert_eq!(table(&d).len(), 2);
        assert_eq!(decode(&mut d, &[0x20]).unwrap(), []);
        assert_eq!(table(&d), []);
        assert_eq!(d.table.size, 0);
        assert_eq!(decode(&mut d, &[0xbe]), Err(HpackError::InvalidIndex(62)));
        // While the maximum is 0, insertions leave the table empty, without error.
        assert_eq!(
            decode(&mut d, &hex("4001 6101 62")).unwrap(),
            fields(&[("a", "b")])
        );
        assert_eq!(table(&d), []);
        // Back up to 4096 (31 + 4065), and the table works again.
        decode(&mut d, &hex("3fe1 1f40 0161 0162")).unwrap();
        assert_eq!(d.table.max_size, 4096);
        assert_eq!(table(&d), fields(&[("a", "b")]));
    }

    #[test]
    fn an_entry_larger_than_the_table_empties_it() {
        let mut d = Decoder::new(64);
        decode(&mut d, &hex("4001 6101 62")).unwrap();
        let mut block = vec![0x40, 0x01, b'n', 0x20];
        block.extend_from_slice(&[b'v'; 32]); // 1 + 32 + 32 > 64
        let got = decode(&mut d, &block).unwrap();
        assert_eq!(got, fields(&[("n", &"v".repeat(32))]));
        assert_eq!(table(&d), []);
    }

    #[test]
    fn an_insertion_may_evict_the_entry_it_names() {
        // §4.4: the new entry's name comes from the entry that makes room for it.
        let mut d = Decoder::new(64);
        let mut first = vec![0x40, 0x04];
        first.extend_from_slice(b"name");
        first.push(20);
        first.extend_from_slice(&[b'1'; 20]);
        decode(&mut d, &first).unwrap(); // size 56
        let mut second = vec![0x7e, 20]; // name index 62
        second.extend_from_slice(&[b'2'; 20]);
        let got = decode(&mut d, &second).unwrap();
        assert_eq!(got, fields(&[("name", &"2".repeat(20))]));
        assert_eq!(table(&d), fields(&[("name", &"2".repeat(20))]));
    }

    #[test]
    fn rejects_bad_huffman() {
        // A Huffman name (0x00, H bit and length 4) of EOS, then a value.
        assert_eq!(
            error(4096, &[0x00, 0x84, 0xff, 0xff, 0xff, 0xff, 0x00]),
            HpackError::Huffman(HuffmanError::Eos)
        );
        // A Huffman value: 'a' padded with 000.
        assert_eq!(
            error(4096, &[0x04, 0x81, 0x18]),
            HpackError::Huffman(HuffmanError::BadPadding)
        );
        // A Huffman value: 'a' and 11 bits of 1s.
        assert_eq!(
            error(4096, &[0x44, 0x82, 0x1f, 0xff]),
            HpackError::Huffman(HuffmanError::PaddingTooLong)
        );
        // An empty Huffman string is fine.
        let got = decode(&mut Decoder::new(4096), &[0x04, 0x80]).unwrap();
        assert_eq!(got, fields(&[(":path", "")]));
    }

    /// Many insertions through small tables, against a plain list: catches slips in the
    /// byte buffer's compaction and span bookkeeping.
    #[test]
    fn the_table_matches_a_simple_model() {
        for limit in [64, 100, 256, 4096] {
            let mut d = Decoder::new(limit);
            let mut model: VecDeque<(Vec<u8>, Vec<u8>)> = VecDeque::new();
            let mut seed: u32 = 12345;
            let mut random = |n: u32| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (seed >> 16) % n
            };
            for round in 0..3000 {
                let mut block = Vec::new();
                let value: Vec<u8> = (0..random(60)).map(|i| b'a' + (i % 26) as u8).collect();
                let (name, indexed_name) = if !model.is_empty() && random(2) == 0 {
                    let i = random(model.len() as u32) as usize;
                    encode_integer(62 + i, 6, 0x40, &mut block);
                    (model[i].0.clone(), true)
                } else {
                    let name = format!("n{round}").into_bytes();
                    block.push(0x40);
                    encode_string(&name, &mut block);
                    (name, false)
                };
                encode_string(&value, &mut block);
                let mut got = Vec::new();
                d.decode(&block, &mut |n, v| got.push((n.to_vec(), v.to_vec())))
                    .unwrap();
                assert_eq!(got, [(name.clone(), value.clone())], "round {round}");

                let size = name.len() + value.len() + 32;
                if size > limit {
                    model.clear();
                } else {
                    while model
                        .iter()
                        .map(|(n, v)| n.len() + v.len() + 32)
                        .sum::<usize>()
                        + size
                        > limit
                    {
                        model.pop_back();
                    }
                    model.push_front((name, value));
                }
                let table: Vec<_> = (0..d.table.entries.len())
                    .map(|i| {
                        let (n, v) = d.table.get(i).unwrap();
                        (n.to_vec(), v.to_vec())
                    })
                    .collect();
                assert_eq!(
                    table,
                    Vec::from(model.clone()),
                    "round {round}, {indexed_name}"
                );
                assert!(d.table.bytes.len() <= d.table.room);
                assert_eq!(d.table.bytes.capacity(), 2 * limit, "never reallocates");
            }
        }
    }
}
