//! `named_enum!`: an enum whose values have a wire name, and optionally a stored code, written
//! once per value. Event types, subject kinds and scopes are declared with it, so adding one is
//! one line and its name, its place in `ALL`, and its code cannot drift apart.

/// Declares `enum $ty` with `ALL`, `as_str` and `parse`; when every value has a stored code
/// (`Value = "wire.name" @ 3;`), also `code` and `from_code`. A code is on disk: never change
/// or reuse one.
macro_rules! named_enum {
    (
        $(#[$meta:meta])* pub enum $ty:ident {
            $($(#[doc = $doc:literal])* $variant:ident = $name:tt $(@ $code:tt)?;)+
        }
    ) => {
        $(#[$meta])*
        pub enum $ty {
            $($(#[doc = $doc])* #[serde(rename = $name)] $variant,)+
        }

        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The wire name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)+
                }
            }

            /// Parses a wire name.
            pub fn parse(s: &str) -> Option<$ty> {
                $ty::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        named_enum!(@codes $ty; $($variant $($code)?;)+);
    };
    (@codes $ty:ident; $($variant:ident $code:tt;)+) => {
        impl $ty {
            /// The code the database stores for this value.
            pub fn code(self) -> u8 {
                match self {
                    $($ty::$variant => $code,)+
                }
            }

            /// The value a stored code stands for.
            pub fn from_code(code: u8) -> Option<$ty> {
                match code {
                    $($code => Some($ty::$variant),)+
                    _ => None,
                }
            }
        }
    };
    (@codes $ty:ident; $($variant:ident;)+) => {};
}
