//! Complete responses and response headers, shared by the subscriber's refusals and poll
//! answers and the publish answers.

use std::ptr::{self, addr_of_mut};

use ngx::ffi::{
    ngx_chain_t, ngx_create_temp_buf, ngx_http_output_filter, ngx_http_request_t,
    ngx_http_send_header, ngx_int_t, ngx_list_push, ngx_table_elt_t, ngx_uint_t, NGX_ERROR, NGX_OK,
};

/// Sends a complete response.
///
/// # Safety
/// `r` must be a live request with no response sent.
pub unsafe fn send_body(
    r: *mut ngx_http_request_t,
    status: u16,
    content_type: &'static str,
    body: &[u8],
    extra: &[(&str, String)],
) -> ngx_int_t {
    // SAFETY: r is live; everything allocated comes from its pool and lives as long as it.
    unsafe {
        (*r).headers_out.status = status as ngx_uint_t;
        (*r).headers_out.content_type = ngx::ffi::ngx_str_t {
            len: content_type.len(),
            data: content_type.as_ptr().cast_mut(),
        };
        (*r).headers_out.content_type_len = (*r).headers_out.content_type.len;
        (*r).headers_out.content_length_n = body.len() as _;
        if body.is_empty() {
            (*r).set_header_only(1);
        }
        for (name, value) in extra {
            if !push_header(r, name, value) {
                return NGX_ERROR as ngx_int_t;
            }
        }
        let rc = ngx_http_send_header(r);
        if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || (*r).header_only() != 0 {
            return rc;
        }
        let buf = ngx_create_temp_buf((*r).pool, body.len());
        if buf.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        ptr::copy_nonoverlapping(body.as_ptr(), (*buf).last, body.len());
        (*buf).last = (*buf).last.add(body.len());
        (*buf).set_last_buf(1);
        (*buf).set_last_in_chain(1);
        let mut out = ngx_chain_t {
            buf,
            next: ptr::null_mut(),
        };
        ngx_http_output_filter(r, &mut out)
    }
}

/// Adds a response header.
///
/// # Safety
/// `r` must be a live request whose header was not sent yet.
pub unsafe fn push_header(r: *mut ngx_http_request_t, name: &str, value: &str) -> bool {
    // SAFETY: r is live; the list element is filled completely before use.
    unsafe {
        let h = ngx_list_push(addr_of_mut!((*r).headers_out.headers)).cast::<ngx_table_elt_t>();
        if h.is_null() {
            return false;
        }
        if ngx::ffi::add_to_ngx_table(h, (*r).pool, name, value).is_none() {
            return false;
        }
        #[cfg(nginx1_23)]
        {
            (*h).next = ptr::null_mut();
        }
    }
    true
}
