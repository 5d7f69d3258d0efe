pub mod compute;
pub mod exits;
pub mod kv;
pub mod tcploop;
pub mod ticker;
