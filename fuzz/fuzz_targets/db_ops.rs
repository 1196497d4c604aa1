#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ourdb_fuzz::db_ops(data));
