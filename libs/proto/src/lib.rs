//! Generated gRPC clients, servers and messages for the exchange's APIs, plus the
//! encoded file descriptor set of each package for server reflection.
//!
//! Decimal quantities are strings on the wire; [`decimal`] reads and writes
//! them for every service.

#[warn(clippy::all)]
pub mod decimal;
#[warn(clippy::all)]
mod market_event;

/// `exchange.marketdata.v1`
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod marketdata {
    pub mod v1 {
        tonic::include_proto!("exchange.marketdata.v1");
        /// Descriptor set for reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            tonic::include_file_descriptor_set!("marketdata_descriptor");
    }
}

/// `exchange.order.v1`
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod order {
    pub mod v1 {
        tonic::include_proto!("exchange.order.v1");
        /// Descriptor set for reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            tonic::include_file_descriptor_set!("order_descriptor");
    }
}

/// `exchange.inventory.v1`
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod inventory {
    pub mod v1 {
        tonic::include_proto!("exchange.inventory.v1");
        /// Descriptor set for reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            tonic::include_file_descriptor_set!("inventory_descriptor");
    }
}

/// `exchange.user.v1`
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod user {
    pub mod v1 {
        tonic::include_proto!("exchange.user.v1");
        /// Descriptor set for reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            tonic::include_file_descriptor_set!("user_descriptor");
    }
}
