//! `gtm`: see DESIGN.md; the service is built in its own issue.
