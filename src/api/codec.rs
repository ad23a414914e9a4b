//! The protobuf codec of the generated stubs (`build.rs` names it): prost's, except that a
//! message that does not decode is INVALID_ARGUMENT — the caller sent bad input, nothing was
//! decided — where tonic-prost answers INTERNAL, which reads as the server's fault and would be
//! retried. The generated clients share the codec, so a client that cannot decode a response
//! reports the same code; the message says which message did not decode. Each one is counted as
//! a `malformed` refusal.

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

use super::refusal::Refusal;

#[derive(Debug, Clone)]
pub struct StrictCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        Self(ProstCodec::default())
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(self.0.decoder())
    }
}

#[derive(Debug)]
pub struct StrictDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| {
            let name = std::any::type_name::<U>().rsplit("::").next().unwrap_or("message");
            Refusal::Malformed { message_type: name.to_owned(), why: status.message().to_owned() }.status()
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
