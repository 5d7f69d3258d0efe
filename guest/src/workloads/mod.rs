pub mod compute;
pub mod ticker;
