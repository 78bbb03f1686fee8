//! The hickory request handler: picks for each query between answering it from
//! the directory (names under `internal.` and `flycast.`) and relaying it
//! upstream, and turns the result into the response message.

use hickory_proto::op::{Edns, Header, HeaderCounts, Message, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::DNSClass;
use hickory_server::net::NetError;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tracing::{debug, warn};

use crate::answer::answer;
use crate::directory::Directory;
use crate::flycast;
use crate::forward::{Forwarder, Transport};
use crate::names;
use crate::org::OrgResolver;

pub(crate) struct Handler {
    pub(crate) directory: Directory,
    pub(crate) org_of: OrgResolver,
    pub(crate) region: String,
    pub(crate) forwarder: Forwarder,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let edns = response_edns(request);
        let builder = || MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let error = |code| builder().error_msg(&request.metadata, code);
        let query = match (request.metadata.op_code, request.request_info()) {
            (OpCode::Query, Ok(info)) => info.query,
            // Not exactly one question.
            (OpCode::Query, Err(_)) => {
                let sent = response_handle
                    .send_response(error(ResponseCode::FormErr))
                    .await;
                return reported(request, sent);
            }
            _ => {
                let sent = response_handle
                    .send_response(error(ResponseCode::NotImp))
                    .await;
                return reported(request, sent);
            }
        };
        let is_flycast = flycast::is_flycast(query.name().iter());
        if !is_flycast && !names::is_internal(query.name().iter()) {
            return self.forward(request, edns.as_ref(), response_handle).await;
        }
        if query.query_class() != DNSClass::IN {
            let sent = response_handle
                .send_response(error(ResponseCode::Refused))
                .await;
            return reported(request, sent);
        }

        let org = (self.org_of)(request.src().ip());
        let answer = if is_flycast {
            flycast::answer(
                &self.directory.current_flycast(),
                org,
                query.original().name(),
                query.query_type(),
            )
        } else {
            answer(
                &self.directory.current(),
                org,
                query.original().name(),
                query.query_type(),
                &self.region,
                &mut rand::rng(),
            )
        };
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = answer.code != ResponseCode::Refused;
        metadata.recursion_available = true;
        metadata.response_code = answer.code;
        let sent = response_handle
            .send_response(builder().build(
                metadata,
                answer.answers.iter(),
                std::iter::empty(),
                answer.soa.iter(),
                std::iter::empty(),
            ))
            .await;
        reported(request, sent)
    }
}

impl Handler {
    /// Relays the query upstream and passes the reply on, or SERVFAIL when no
    /// upstream answered. The reply is decoded and encoded again (hickory sends
    /// only messages it builds), which also fits it to the client's size limit.
    async fn forward<R: ResponseHandler>(
        &self,
        request: &Request,
        edns: Option<&Edns>,
        mut response_handle: R,
    ) -> ResponseInfo {
        let transport = match request.protocol() {
            Protocol::Udp => Transport::Udp,
            _ => Transport::Tcp,
        };
        let builder = MessageResponseBuilder::new(&request.queries, edns);
        let reply = match self.forwarder.forward(request.as_slice(), transport).await {
            Ok(reply) => Message::from_vec(&reply)
                .inspect_err(|error| warn!(%error, "upstream reply does not decode"))
                .ok(),
            Err(error) => {
                warn!(%error, "query not forwarded");
                None
            }
        };
        let sent = match reply {
            Some(reply) => {
                let mut metadata = reply.metadata;
                metadata.id = request.metadata.id;
                response_handle
                    .send_response(builder.build(
                        metadata,
                        reply.answers.iter(),
                        reply.authorities.iter(),
                        std::iter::empty(),
                        reply.additionals.iter(),
                    ))
                    .await
            }
            None => {
                response_handle
                    .send_response(builder.error_msg(&request.metadata, ResponseCode::ServFail))
                    .await
            }
        };
        reported(request, sent)
    }
}

/// The OPT record of the response: present if and only if the query had one,
/// advertising the client's own size limit, which hickory then applies to the
/// UDP message (512 bytes without EDNS).
fn response_edns(request: &Request) -> Option<Edns> {
    request.edns.as_ref().map(|_| {
        let mut edns = Edns::new();
        edns.set_max_payload(request.max_payload());
        edns
    })
}

/// What hickory logs about the response; a SERVFAIL when none went out.
fn reported(request: &Request, sent: Result<ResponseInfo, NetError>) -> ResponseInfo {
    sent.unwrap_or_else(|error| {
        debug!(src = %request.src(), %error, "cannot send the response");
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = ResponseCode::ServFail;
        ResponseInfo::from(Header {
            metadata,
            counts: HeaderCounts::default(),
        })
    })
}
