//! A request refused by the policy: a plain refusal, or a limit reached (which answers with
//! its own headers).

use bytes::Bytes;
use http::Response;

use crate::limits::Limited;
use crate::refusal::{Presented, Refusal};

#[derive(Debug)]
pub enum Refused {
    Plain(Refusal),
    Limited(Limited),
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Refused {
        Refused::Plain(refusal)
    }
}

impl From<Limited> for Refused {
    fn from(limited: Limited) -> Refused {
        Refused::Limited(limited)
    }
}

impl Refused {
    pub fn refusal(&self) -> Refusal {
        match self {
            Refused::Plain(r) => *r,
            Refused::Limited(l) => l.refusal(),
        }
    }

    /// The whole answer: `Refusal::response_for` what the request presented, plus a limit's
    /// `Retry-After` and fields.
    pub fn response<B: From<Bytes>>(&self, presented: Presented) -> Response<B> {
        match self {
            Refused::Plain(r) => r.response_for(presented),
            Refused::Limited(l) => l.response(),
        }
    }
}
