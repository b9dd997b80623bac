//! RS256 signatures by the runtime's WebCrypto, for Google service-account
//! JWTs ([`crate::google::oauth`]): `crypto.subtle.importKey('pkcs8', …)`
//! then `crypto.subtle.sign('RSASSA-PKCS1-v1_5', …)`. The runtime's RSA is
//! native code, and no RSA implementation is compiled into the wasm. A key
//! is imported for each signature: that is once per token, about once an
//! hour per isolate and account.

use wasm_bindgen::prelude::*;
use worker::js_sys::{self, Array, Object, Promise, Reflect, Uint8Array};
use worker::wasm_bindgen_futures::JsFuture;

#[wasm_bindgen]
extern "C" {
    /// `crypto.subtle`.
    type SubtleCrypto;

    #[wasm_bindgen(method, catch, js_name = importKey)]
    fn import_key(
        this: &SubtleCrypto,
        format: &str,
        key_data: &Uint8Array,
        algorithm: &Object,
        extractable: bool,
        usages: &Array,
    ) -> Result<Promise, JsValue>;

    #[wasm_bindgen(method, catch)]
    fn sign(
        this: &SubtleCrypto,
        algorithm: &str,
        key: &JsValue,
        data: &Uint8Array,
    ) -> Result<Promise, JsValue>;
}

/// The RSASSA-PKCS1-v1_5 / SHA-256 signature of `message` under the PKCS #8
/// DER private key `pkcs8_der`.
pub(super) async fn sign_rs256(pkcs8_der: &[u8], message: &[u8]) -> Result<Vec<u8>, String> {
    let failed = |what: &str, e: JsValue| {
        let detail = e
            .dyn_ref::<js_sys::Error>()
            .map(|e| String::from(e.message()))
            .or_else(|| e.as_string())
            .unwrap_or_else(|| "unknown error".to_owned());
        format!("WebCrypto {what}: {detail}")
    };
    let crypto =
        Reflect::get(&js_sys::global(), &"crypto".into()).map_err(|e| failed("crypto", e))?;
    let subtle: SubtleCrypto = Reflect::get(&crypto, &"subtle".into())
        .map_err(|e| failed("crypto.subtle", e))?
        .unchecked_into();
    let algorithm = Object::new();
    let set = |k: &str, v: &str| Reflect::set(&algorithm, &k.into(), &v.into());
    set("name", "RSASSA-PKCS1-v1_5").map_err(|e| failed("algorithm", e))?;
    set("hash", "SHA-256").map_err(|e| failed("algorithm", e))?;
    let usages = Array::of1(&"sign".into());
    let imported = subtle
        .import_key(
            "pkcs8",
            &Uint8Array::from(pkcs8_der),
            &algorithm,
            false,
            &usages,
        )
        .map_err(|e| failed("importKey", e))?;
    let key = JsFuture::from(imported)
        .await
        .map_err(|e| failed("importKey", e))?;
    let signed = subtle
        .sign("RSASSA-PKCS1-v1_5", &key, &Uint8Array::from(message))
        .map_err(|e| failed("sign", e))?;
    let signature = JsFuture::from(signed)
        .await
        .map_err(|e| failed("sign", e))?;
    Ok(Uint8Array::new(&signature).to_vec())
}
