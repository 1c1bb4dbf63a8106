//! The blackhole sink's logic as an Extism plugin: the input is a packed
//! batch (a little-endian u32 record count, then the records in the
//! sinkbox-format encoding), decoded in place and counted, as the
//! `blackhole` component does.

use std::cell::Cell;

use extism_pdk::*;

thread_local! {
    static RECORDS: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
}

#[plugin_fn]
pub fn add(input: Vec<u8>) -> FnResult<u64> {
    let count = u32::from_le_bytes(input[..4].try_into()?);
    let (mut records, mut bytes) = (0u64, 0u64);
    for record in sinkbox_format::Records::new(&input[4..], count) {
        let record = record.map_err(|e| Error::msg(e.to_string()))?;
        records += 1;
        bytes += (record.key.map_or(0, <[u8]>::len) + record.value.len()) as u64;
    }
    RECORDS.set(RECORDS.get() + records);
    BYTES.set(BYTES.get() + bytes);
    Ok(records)
}
