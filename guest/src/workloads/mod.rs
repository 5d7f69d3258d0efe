pub mod compute;
pub mod exits;
pub mod tcploop;
pub mod ticker;
