//! placeholder replaced by the rdma backend
