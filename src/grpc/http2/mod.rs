//! Our own HTTP/2 server framing for the gRPC port (docs/service.md §2, "The serving loop"):
//! frames, HPACK, and a connection's protocol state without I/O. `connection.rs` drives it.
pub(crate) mod frame;
pub(crate) mod hpack;
pub(crate) mod huffman;
pub(crate) mod session;
#[cfg(test)]
mod tests;
