//! GTM protocol types and client library (issue 4).
