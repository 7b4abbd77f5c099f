//! From a `Method*` to the Java method's name, as a perf map writes it: `package.Class.method`.
//!
//! The chain: `Method::_constMethod` → `ConstMethod` (`_constants`, `_name_index`,
//! `_signature_index`) → `ConstantPool` (its `_pool_holder` class, and its entries, one word
//! each right after the `ConstantPool` header, a `Symbol*` for a UTF-8 entry) → the holder's
//! `Klass::_name` → `Symbol` (`_length`, `_body`). The class's source file is the constant-pool
//! entry `ConstantPool::_source_file_name_index`.
//!
//! Every pointer and index comes from the target: indices are checked against the pool's
//! length, symbols are capped in length and must be UTF-8-ish (HotSpot's modified UTF-8 is
//! read lossily), and any failure is an error for that method only.

use super::{
    HotspotError,
    memory::{Memory, TargetAddr},
    vmstructs::{Field, VmStructs},
};

/// The longest symbol read. HotSpot allows 65535 bytes; real class and method names are far
/// shorter, and a name this long is useless in a report anyway.
const MAX_SYMBOL: u64 = 4096;
/// The most entries a constant pool is believed to have (the class-file format's limit).
const MAX_POOL_LENGTH: u64 = 65_535;

#[derive(Clone, Debug)]
pub struct MethodLayout {
    const_method: Field,
    constants: Field,
    name_index: Field,
    signature_index: Field,
    pool_holder: Field,
    pool_length: Field,
    source_file_index: Option<Field>,
    /// `sizeof(ConstantPool)`: entries follow the header.
    pool_header: u64,
    klass_name: Field,
    symbol_length: Field,
    symbol_body: u64,
}

impl MethodLayout {
    pub fn new(vm: &VmStructs) -> Result<Self, HotspotError> {
        Ok(Self {
            const_method: vm.field("Method", "_constMethod")?,
            constants: vm.field("ConstMethod", "_constants")?,
            name_index: vm.field("ConstMethod", "_name_index")?,
            signature_index: vm.field("ConstMethod", "_signature_index")?,
            pool_holder: vm.field("ConstantPool", "_pool_holder")?,
            pool_length: vm.field("ConstantPool", "_length")?,
            // JDK 8 kept it in InstanceKlass; from JDK 9 it is the pool's. Optional either way.
            source_file_index: vm.field("ConstantPool", "_source_file_name_index").ok(),
            pool_header: vm.size_of("ConstantPool")?,
            klass_name: vm.field("Klass", "_name")?,
            symbol_length: vm.field("Symbol", "_length")?,
            symbol_body: vm.offset("Symbol", "_body")?,
        })
    }

    /// The method's `ConstMethod*`, half of its identity ([`MethodKey`]).
    pub fn const_method(
        &self,
        memory: &impl Memory,
        method: TargetAddr,
    ) -> Result<TargetAddr, HotspotError> {
        self.const_method
            .read(memory, method)
            .map(TargetAddr)
            .map_err(|cause| HotspotError::Memory {
                what: "Method",
                cause,
            })
    }

    /// Names the method at `method`.
    pub fn name(
        &self,
        memory: &impl Memory,
        method: TargetAddr,
    ) -> Result<MethodName, HotspotError> {
        let mem = |what: &'static str| move |cause| HotspotError::Memory { what, cause };
        if method.is_null() {
            return Err(HotspotError::Corrupt {
                what: "Method",
                detail: "NULL".to_owned(),
            });
        }
        let const_method = TargetAddr(
            self.const_method
                .read(memory, method)
                .map_err(mem("Method"))?,
        );
        let read_const =
            |field: Field| field.read(memory, const_method).map_err(mem("ConstMethod"));
        let pool = TargetAddr(read_const(self.constants)?);
        let name_index = read_const(self.name_index)?;
        let signature_index = read_const(self.signature_index)?;
        let read_pool = |field: Field| field.read(memory, pool).map_err(mem("ConstantPool"));
        let holder = TargetAddr(read_pool(self.pool_holder)?);
        let length = read_pool(self.pool_length)?;
        if length > MAX_POOL_LENGTH {
            return Err(HotspotError::Corrupt {
                what: "ConstantPool",
                detail: format!("{length} entries"),
            });
        }
        let entry = |index: u64| -> Result<String, HotspotError> {
            if index == 0 || index >= length {
                return Err(HotspotError::Corrupt {
                    what: "ConstantPool",
                    detail: format!("index {index} of {length}"),
                });
            }
            let slot = pool
                .offset(self.pool_header + index * 8)
                .map_err(mem("ConstantPool entry"))?;
            let symbol = memory.read_addr(slot).map_err(mem("ConstantPool entry"))?;
            // Some JDKs tag a pool slot's lowest bit (resolved or not); a Symbol* is aligned,
            // so the bit is never part of the address.
            self.symbol(memory, TargetAddr(symbol.0 & !1))
        };
        let method_name = entry(name_index)?;
        let signature = entry(signature_index)?;
        let source_file = match self.source_file_index {
            Some(field) => match read_pool(field)? {
                0 => None,
                index => entry(index).ok(),
            },
            None => None,
        };
        let klass_symbol = TargetAddr(self.klass_name.read(memory, holder).map_err(mem("Klass"))?);
        let class = external_class_name(&self.symbol(memory, klass_symbol)?);
        Ok(MethodName {
            class,
            method: method_name,
            signature,
            source_file,
            key: MethodKey {
                method,
                const_method,
            },
        })
    }

    /// The text of a `Symbol`.
    pub fn symbol(&self, memory: &impl Memory, symbol: TargetAddr) -> Result<String, HotspotError> {
        let mem = |cause| HotspotError::Memory {
            what: "Symbol",
            cause,
        };
        if symbol.is_null() {
            return Err(HotspotError::Corrupt {
                what: "Symbol",
                detail: "NULL".to_owned(),
            });
        }
        let length = self.symbol_length.read(memory, symbol).map_err(mem)?;
        if length > MAX_SYMBOL {
            return Err(HotspotError::Corrupt {
                what: "Symbol",
                detail: format!("{length} bytes long"),
            });
        }
        let body = symbol.offset(self.symbol_body).map_err(mem)?;
        let bytes = memory.read_vec(body, length as usize).map_err(mem)?;
        // Modified UTF-8 differs from UTF-8 only for NUL and supplementary characters.
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// A method's identity in the target, for caches: a `Method*` alone can be freed with its class
/// and reused for another method, while its `ConstMethod*` is allocated and freed with it, so
/// a reused `Method*` with the same `ConstMethod*` would need both to be reused together.
/// Callers that can should also check the nmethod's compile id ([`super::codecache::BlobKey`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MethodKey {
    pub method: TargetAddr,
    pub const_method: TargetAddr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MethodName {
    /// `java.lang.String`, `Foo$Bar`, `Foo$$Lambda$14/0x0000000800c03000`.
    pub class: String,
    pub method: String,
    /// The JVM descriptor, `(IJ)V`.
    pub signature: String,
    /// `Foo.java`, when the class was compiled with it.
    pub source_file: Option<String>,
    pub key: MethodKey,
}

impl MethodName {
    /// `package.Class.method`, as leakhound names Java frames from a perf map.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.class, self.method)
    }
}

/// A class's internal name as Java code writes it: `java/lang/String` → `java.lang.String`.
/// A hidden class (a lambda's) keeps the `/` before its address suffix, as HotSpot's own
/// `external_name` does: its internal name has a `+` there.
pub fn external_class_name(internal: &str) -> String {
    match internal.rfind("+0x") {
        Some(plus) => format!(
            "{}/{}",
            internal[..plus].replace('/', "."),
            &internal[plus + 1..]
        ),
        None => internal.replace('/', "."),
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::jit::hotspot::{memory::FakeMemory, vmstructs::tests::FakeJvm};

    pub fn declare(jvm: &mut FakeJvm) {
        jvm.type_entry("ConstantPool", None, 80);
        jvm.field("Method", "_constMethod", "ConstMethod*", 8);
        jvm.field("ConstMethod", "_constants", "ConstantPool*", 8);
        jvm.field("ConstMethod", "_name_index", "u2", 34);
        jvm.field("ConstMethod", "_signature_index", "u2", 36);
        jvm.field("ConstantPool", "_pool_holder", "InstanceKlass*", 24);
        jvm.field("ConstantPool", "_length", "int", 64);
        jvm.field("ConstantPool", "_source_file_name_index", "u2", 70);
        jvm.field("Klass", "_name", "Symbol*", 16);
        jvm.field("Symbol", "_length", "u2", 4);
        jvm.field("Symbol", "_body", "u1", 6);
    }

    pub const METHOD: u64 = 0x50_0000;
    const CONST_METHOD: u64 = 0x50_1000;
    const POOL: u64 = 0x50_2000;
    const KLASS: u64 = 0x50_3000;
    const SYMBOLS: u64 = 0x50_4000;

    /// A method `run` with signature `()V` of class `com/example/Server`, from Server.java.
    pub fn method_images(memory: &mut FakeMemory) {
        let mut symbols = Vec::new();
        let mut symbol = |text: &str| {
            let at = SYMBOLS + symbols.len() as u64;
            let mut image = vec![0u8; 6];
            image[4..6].copy_from_slice(&(text.len() as u16).to_le_bytes());
            image.extend_from_slice(text.as_bytes());
            image.resize(image.len().next_multiple_of(8), 0);
            symbols.extend_from_slice(&image);
            at
        };
        let class = symbol("com/example/Server");
        let name = symbol("run");
        let signature = symbol("()V");
        let cause = symbol("Server.java");
        memory.map(TargetAddr(SYMBOLS), symbols);

        let mut method = vec![0u8; 16];
        method[8..16].copy_from_slice(&CONST_METHOD.to_le_bytes());
        memory.map(TargetAddr(METHOD), method);
        let mut const_method = vec![0u8; 40];
        const_method[8..16].copy_from_slice(&POOL.to_le_bytes());
        const_method[34..36].copy_from_slice(&1u16.to_le_bytes());
        const_method[36..38].copy_from_slice(&2u16.to_le_bytes());
        memory.map(TargetAddr(CONST_METHOD), const_method);
        let mut pool = vec![0u8; 80 + 5 * 8];
        pool[24..32].copy_from_slice(&KLASS.to_le_bytes());
        pool[64..68].copy_from_slice(&5u32.to_le_bytes());
        pool[70..72].copy_from_slice(&3u16.to_le_bytes());
        for (index, at) in [(1, name), (2, signature), (3, cause), (4, class)] {
            pool[80 + index * 8..88 + index * 8].copy_from_slice(&at.to_le_bytes());
        }
        memory.map(TargetAddr(POOL), pool);
        let mut klass = vec![0u8; 24];
        klass[16..24].copy_from_slice(&class.to_le_bytes());
        memory.map(TargetAddr(KLASS), klass);
    }

    fn setup() -> (FakeMemory, MethodLayout) {
        let mut jvm = FakeJvm::new();
        declare(&mut jvm);
        let (mut memory, symbols) = jvm.build();
        method_images(&mut memory);
        let vm = VmStructs::read(&memory, &symbols).unwrap();
        (memory, MethodLayout::new(&vm).unwrap())
    }

    #[test]
    fn names_a_method_with_its_class_and_source() {
        let (memory, layout) = setup();
        let name = layout.name(&memory, TargetAddr(METHOD)).unwrap();
        assert_eq!(name.qualified(), "com.example.Server.run");
        assert_eq!(name.signature, "()V");
        assert_eq!(name.source_file.as_deref(), Some("Server.java"));
        assert_eq!(
            name.key,
            MethodKey {
                method: TargetAddr(METHOD),
                const_method: TargetAddr(CONST_METHOD)
            }
        );
    }

    #[test]
    fn crafted_indices_and_lengths_are_errors() {
        let (mut memory, layout) = setup();
        // A name index past the pool.
        memory.write(TargetAddr(CONST_METHOD + 34), &9u16.to_le_bytes());
        let err = layout.name(&memory, TargetAddr(METHOD)).unwrap_err();
        assert!(err.to_string().contains("index 9"), "{err}");
        memory.write(TargetAddr(CONST_METHOD + 34), &1u16.to_le_bytes());
        // A pool claiming a billion entries.
        memory.write(TargetAddr(POOL + 64), &1_000_000_000u32.to_le_bytes());
        assert!(layout.name(&memory, TargetAddr(METHOD)).is_err());
        memory.write(TargetAddr(POOL + 64), &5u32.to_le_bytes());
        // A symbol longer than readable memory.
        memory.write(TargetAddr(SYMBOLS + 4), &60_000u16.to_le_bytes());
        assert!(layout.name(&memory, TargetAddr(METHOD)).is_err());
        // NULL and unmapped methods.
        assert!(layout.name(&memory, TargetAddr::NULL).is_err());
        assert!(layout.name(&memory, TargetAddr(0x9999_0000)).is_err());
    }

    #[test]
    fn hidden_classes_keep_their_address_suffix() {
        assert_eq!(external_class_name("java/lang/String"), "java.lang.String");
        assert_eq!(
            external_class_name("Foo$$Lambda$14+0x0000000800c03000"),
            "Foo$$Lambda$14/0x0000000800c03000"
        );
        assert_eq!(
            external_class_name("a/b/Foo$$Lambda$14+0x0000000800c03000"),
            "a.b.Foo$$Lambda$14/0x0000000800c03000"
        );
    }
}
