//! The `#[task]` attribute of `wasq-guest`; use it as `wasq_guest::task`.
//!
//! The attribute emits the function unchanged and, beside it, an anonymous
//! `const _: () = { … };` block holding an `extern "C" fn` that is exported as
//! `task.<name>` on wasm targets. The glue calls into `wasq_guest::__private`, so
//! the crate using the attribute must depend on `wasq-guest` under that name.
//!
//! Natively the glue still compiles (never exported, never called), so that
//! `cargo test` of a task crate type-checks it: a parameter type that is not
//! `Deserialize` or a return type that is not `Serialize` fails there too, with
//! the error on that type.
//!
//! # Layout
//!
//! - [`task`]: the entry point; on error it emits the function unchanged plus
//!   the errors, so one mistake does not cascade into "cannot find function".
//! - `parse_args`: `#[task(name = "…")]`.
//! - `check_signature`: everything a task's signature must satisfy.
//! - `expand`: the glue.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{ToTokens, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, LitStr, Pat, ReturnType, Type};

/// Marks a function as a wasq task and exports it as `task.<name>`.
///
/// The function is emitted unchanged, so it stays callable from Rust and can be
/// unit-tested natively. On wasm targets a hidden export `task.<name>` of type
/// `[] -> []` is added: it reads the call's JSON argument array, decodes each
/// element into the parameter in the same position (`serde::Deserialize`),
/// calls the function and reports its return value.
///
/// # Examples
///
/// ```
/// use std::collections::BTreeMap;
///
/// use wasq_guest::log::info;
/// use wasq_guest::task;
///
/// /// `[4, 5]` → `9`; `[4]` → bad_input "task add takes 2 arguments (x, y), got 1".
/// #[task]
/// fn add(x: i64, y: i64) -> i64 {
///     x + y
/// }
///
/// /// A trailing `Option` may be omitted: `["a b a"]` or `["a b a", 2]`.
/// #[task]
/// fn word_count(text: String, min: Option<u64>) -> BTreeMap<String, u64> {
///     let mut counts = BTreeMap::new();
///     for word in text.split_whitespace() {
///         *counts.entry(word.to_owned()).or_insert(0) += 1;
///     }
///     counts.retain(|_, n| *n >= min.unwrap_or(1));
///     info!("{} distinct words", counts.len());
///     counts
/// }
///
/// /// `Err(e)` fails the call (kind `task_error`) with message `e.to_string()`.
/// #[task]
/// fn fib(n: u32) -> Result<u64, String> {
///     if n > 93 {
///         return Err(format!("fib({n}) does not fit in a u64; n must be at most 93"));
///     }
///     fn go(n: u32) -> u64 {
///         if n < 2 { n.into() } else { go(n - 1) + go(n - 2) }
///     }
///     Ok(go(n))
/// }
///
/// /// Exported as `task.ping`; no return type means the result is `null`.
/// #[task(name = "ping")]
/// fn health_check() {}
///
/// // Natively these are plain functions.
/// assert_eq!(add(4, 5), 9);
/// assert_eq!(word_count("a b a".into(), Some(2)), BTreeMap::from([("a".into(), 2)]));
/// assert!(fib(94).is_err());
/// health_check();
/// ```
///
/// # Arguments of the attribute
///
/// - `name = "…"`: the export is `task.<name>` instead of `task.<function name>`;
///   it must match `[A-Za-z_][A-Za-z0-9_]*`.
///
/// # Rules, checked at compile time
///
/// A task is a free function that is not `async`, not `unsafe`, not generic
/// (no type, lifetime or const parameters, no `where`), takes no `self` and no
/// variadic `...`, and whose parameters are plain identifiers (`x`, `mut x`; use
/// `_x` for one that is unused) of owned types (`String`, not `&str`; no `impl
/// Trait`). Parameter types must implement `serde::Deserialize`; the return type
/// must be `()`, `Result<T, E>` with `T: Serialize, E: Display`, or any other
/// `T: Serialize`. A `Result` is recognised by the last segment of its path.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    let original = TokenStream2::from(item.clone());
    let function: ItemFn = match syn::parse(item) {
        Ok(function) => function,
        Err(err) => {
            let errors = err.to_compile_error();
            return quote!(#original #errors).into();
        }
    };
    let result = parse_args(attr.into()).and_then(|name| check_signature(&function, name));
    match result {
        Ok(spec) => expand(&function, &spec).into(),
        Err(err) => {
            // Keep the function (minus a variadic `...`, which rustc would reject
            // too) so that its callers still compile and only our errors show.
            let mut function = function.clone();
            if function.sig.variadic.take().is_some() {
                let inputs = std::mem::take(&mut function.sig.inputs);
                function.sig.inputs = inputs.into_iter().collect();
            }
            let errors = err.to_compile_error();
            quote!(#function #errors).into()
        }
    }
}

/// `#[task]` or `#[task(name = "other")]`.
fn parse_args(attr: TokenStream2) -> syn::Result<Option<LitStr>> {
    let mut name: Option<LitStr> = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            if name.is_some() {
                return Err(meta.error("duplicate `name` argument"));
            }
            if !meta.input.peek(syn::Token![=]) {
                return Err(meta.error("expected `name = \"...\"`"));
            }
            name = Some(meta.value()?.parse()?);
            Ok(())
        } else {
            Err(meta.error("unknown argument; `#[task]` takes only `name = \"...\"`"))
        }
    });
    syn::parse::Parser::parse2(parser, attr)?;
    Ok(name)
}

/// What the glue needs to know, once the signature passed every check.
struct TaskSpec<'a> {
    /// The export is `task.{name}`.
    name: String,
    /// Parameter names (for messages) and types, in order.
    params: Vec<(String, &'a Type)>,
    /// Leading parameters a caller must pass; the rest are `Option`s.
    required: usize,
}

/// Checks everything at once, so the user sees every mistake in one build.
fn check_signature(function: &ItemFn, name: Option<LitStr>) -> syn::Result<TaskSpec<'_>> {
    let sig = &function.sig;
    let mut errors: Vec<syn::Error> = Vec::new();
    // `new_spanned` underlines the whole construct, not just its first token.
    let mut error = |tokens: &dyn ToTokens, message: &str| {
        errors.push(syn::Error::new_spanned(tokens, message));
    };

    if let Some(token) = &sig.asyncness {
        error(
            token,
            "a task cannot be `async`: the sandbox runs it to completion on one thread; write a plain `fn`",
        );
    }
    if let Some(token) = &sig.unsafety {
        error(
            token,
            "a task cannot be `unsafe fn`: callers cannot uphold its safety conditions",
        );
    }
    if !sig.generics.params.is_empty() {
        error(
            &sig.generics,
            "a task cannot be generic: the export must know the concrete type of every parameter to decode it",
        );
    }
    if let Some(clause) = &sig.generics.where_clause {
        error(
            clause,
            "a task cannot have a `where` clause: it must not be generic",
        );
    }
    if let Some(variadic) = &sig.variadic {
        error(
            variadic,
            "a task cannot be variadic: it takes a fixed list of JSON arguments",
        );
    }

    let mut params = Vec::new();
    for input in &sig.inputs {
        let typed = match input {
            FnArg::Receiver(receiver) => {
                error(
                    receiver,
                    "a task cannot take `self`: it must be a free function, outside any `impl`",
                );
                continue;
            }
            FnArg::Typed(typed) => typed,
        };
        match &*typed.pat {
            Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => {
                params.push((pat.ident.unraw().to_string(), &*typed.ty));
            }
            other => error(
                other,
                "task parameters must be plain identifiers (they name the argument in error messages); \
                 write `_name` for an unused one",
            ),
        }
        match ungroup(&typed.ty) {
            Type::Reference(reference) => error(
                reference,
                "task parameters are decoded from JSON and must own their data: \
                 use `String` instead of `&str` and `Vec<T>` instead of `&[T]`",
            ),
            Type::ImplTrait(impl_trait) => error(
                impl_trait,
                "task parameters cannot be `impl Trait`: the export needs a concrete type to decode",
            ),
            _ => {}
        }
    }

    let (name, name_tokens): (String, &dyn ToTokens) = match &name {
        Some(lit) => (lit.value(), lit),
        None => (sig.ident.unraw().to_string(), &sig.ident),
    };
    if !is_valid_name(&name) {
        let message = if function_named(&name, sig) {
            format!(
                "`{name}` is not a valid task name (it must match [A-Za-z_][A-Za-z0-9_]*); \
                 rename the export with #[task(name = \"...\")]"
            )
        } else {
            format!("`{name}` is not a valid task name: it must match [A-Za-z_][A-Za-z0-9_]*")
        };
        error(name_tokens, &message);
    }

    if let Some(combined) = errors.into_iter().reduce(|mut all, next| {
        all.combine(next);
        all
    }) {
        return Err(combined);
    }
    let required = params
        .iter()
        .rposition(|(_, ty)| !is_path_ending_in(ty, "Option"))
        .map_or(0, |last| last + 1);
    Ok(TaskSpec {
        name,
        params,
        required,
    })
}

fn function_named(name: &str, sig: &syn::Signature) -> bool {
    sig.ident.unraw() == name
}

/// `[A-Za-z_][A-Za-z0-9_]*`, the ABI's rule for task names.
fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Types from `macro_rules!` expansions arrive wrapped in invisible groups.
fn ungroup(ty: &Type) -> &Type {
    match ty {
        Type::Group(group) => ungroup(&group.elem),
        Type::Paren(paren) => ungroup(&paren.elem),
        other => other,
    }
}

/// Whether `ty` is a path whose last segment is `ident`: `Option<T>`,
/// `std::option::Option<T>`, `io::Result<T>`.
fn is_path_ending_in(ty: &Type, ident: &str) -> bool {
    match ungroup(ty) {
        Type::Path(path) => {
            path.qself.is_none() && path.path.segments.last().is_some_and(|s| s.ident == ident)
        }
        _ => false,
    }
}

fn expand(function: &ItemFn, spec: &TaskSpec<'_>) -> TokenStream2 {
    let TaskSpec {
        name,
        params,
        required,
    } = spec;
    let export = format!("task.{name}");
    let fn_ident = &function.sig.ident;
    let param_names = params.iter().map(|(name, _)| name);
    let arg_idents: Vec<_> = (0..params.len())
        .map(|i| syn::Ident::new(&format!("__wasq_arg{i}"), Span::call_site()))
        .collect();
    // Spanned at the user's type, so "`Foo: Deserialize` is not satisfied" points there.
    let decode = params
        .iter()
        .zip(&arg_idents)
        .enumerate()
        .map(|(i, ((_, ty), ident))| {
            quote_spanned! {ty.span()=>
                let #ident: #ty = __wasq_args.get(#i)?;
            }
        });
    let call = quote!(#fn_ident(#(#arg_idents),*));
    // The value is bound first and reported by a call spanned at the return type,
    // so that "`Foo: Serialize` is not satisfied" points at the return type.
    let returned = syn::Ident::new("__wasq_returned", Span::call_site());
    let report = match &function.sig.output {
        ReturnType::Default => quote!(#call;),
        ReturnType::Type(_, ty) => match ungroup(ty) {
            Type::Tuple(tuple) if tuple.elems.is_empty() => quote!(#call;),
            Type::Never(_) => quote!(#call;),
            _ => {
                let report_fn = if is_path_ending_in(ty, "Result") {
                    quote!(output_result)
                } else {
                    quote!(output_value)
                };
                let returned_at_ty = syn::Ident::new("__wasq_returned", ty.span());
                let report = quote_spanned! {ty.span()=>
                    ::wasq_guest::__private::#report_fn(&SPEC, #returned_at_ty);
                };
                quote! {
                    let #returned = #call;
                    #report
                }
            }
        },
    };

    quote! {
        #function

        const _: () = {
            #[cfg_attr(target_family = "wasm", unsafe(export_name = #export))]
            #[cfg_attr(not(target_family = "wasm"), allow(dead_code))]
            #[allow(unreachable_code)]
            #[doc(hidden)]
            extern "C" fn __wasq_export() {
                static SPEC: ::wasq_guest::__private::TaskSpec = ::wasq_guest::__private::TaskSpec {
                    name: #name,
                    params: &[#(#param_names),*],
                    required: #required,
                };
                ::wasq_guest::__private::run(&SPEC, |__wasq_args| {
                    #(#decode)*
                    #report
                    ::core::result::Result::Ok(())
                })
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_of(item: TokenStream2) -> (String, Vec<String>, usize) {
        let function: ItemFn = syn::parse2(item).unwrap();
        let spec = check_signature(&function, None).unwrap_or_else(|e| panic!("{e}"));
        let names = spec.params.iter().map(|(n, _)| n.clone()).collect();
        (spec.name, names, spec.required)
    }

    #[test]
    fn names() {
        assert!(is_valid_name("add"));
        assert!(is_valid_name("_x9"));
        assert!(is_valid_name("A_b"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("9a"));
        assert!(!is_valid_name("a-b"));
        assert!(!is_valid_name("a.b"));
        assert!(!is_valid_name("caf\u{e9}"));
    }

    #[test]
    fn required_counts_up_to_the_last_non_option() {
        let plain = quote!(
            fn add(x: i64, y: i64) -> i64 {
                x + y
            }
        );
        assert_eq!(
            spec_of(plain),
            ("add".into(), vec!["x".into(), "y".into()], 2)
        );
        let trailing = quote!(
            fn f(a: String, b: Option<u32>, c: std::option::Option<bool>) {}
        );
        assert_eq!(spec_of(trailing).2, 1);
        let middle = quote!(
            fn f(a: Option<String>, b: u32, c: Option<bool>) {}
        );
        assert_eq!(spec_of(middle).2, 2);
        let all = quote!(
            fn f(a: Option<String>) {}
        );
        assert_eq!(spec_of(all).2, 0);
        let none = quote!(
            fn f() {}
        );
        assert_eq!(spec_of(none).2, 0);
    }

    #[test]
    fn raw_identifiers_are_unraw() {
        let item = quote!(
            fn r#type(r#in: u8, mut out: u8) {}
        );
        assert_eq!(
            spec_of(item),
            ("type".into(), vec!["in".into(), "out".into()], 2)
        );
    }

    #[test]
    fn result_is_recognised_by_its_last_segment() {
        let ty: Type = syn::parse_quote!(std::io::Result<u8>);
        assert!(is_path_ending_in(&ty, "Result"));
        let ty: Type = syn::parse_quote!(Result<u8, String>);
        assert!(is_path_ending_in(&ty, "Result"));
        let ty: Type = syn::parse_quote!(Vec<Result<u8, String>>);
        assert!(!is_path_ending_in(&ty, "Result"));
    }
}
