pub mod compute;
pub mod exits;
pub mod ticker;
