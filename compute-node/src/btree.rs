//! B-link trees (being written).
