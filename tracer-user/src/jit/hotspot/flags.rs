//! The JVM's own flags (`-XX:...`), read from its flag table (`JVMFlag::flags`): the values
//! in force, wherever they were set (command line, environment, a flags file, ergonomics).

use super::{
    HotspotError,
    memory::{Memory, TargetAddr},
    vmstructs::{Field, VmStructs},
};

/// The most flags believed (JDK 17 has about 1,300).
const MAX_FLAGS: u64 = 10_000;
/// The longest flag name compared.
const MAX_FLAG_NAME: usize = 128;

#[derive(Clone, Debug)]
pub struct FlagLayout {
    flags: TargetAddr,
    count: TargetAddr,
    size: u64,
    name: Field,
    addr: Field,
}

impl FlagLayout {
    pub fn new(vm: &VmStructs) -> Result<Self, HotspotError> {
        Ok(Self {
            flags: vm.static_address("JVMFlag", "flags")?,
            count: vm.static_address("JVMFlag", "numFlags")?,
            size: vm.size_of("JVMFlag")?,
            name: vm.field("JVMFlag", "_name")?,
            addr: vm.offset("JVMFlag", "_addr").map(|offset| Field {
                offset,
                width: 8,
                signed: false,
            })?,
        })
    }

    /// The value of the boolean flag `name`; `None` when the JVM has no such flag.
    pub fn bool_flag(
        &self,
        memory: &impl Memory,
        name: &str,
    ) -> Result<Option<bool>, HotspotError> {
        let Some(value_at) = self.value_address(memory, name)? else {
            return Ok(None);
        };
        let value = memory.read_u8(value_at).map_err(flag_memory)?;
        Ok(Some(value != 0))
    }

    /// The value of the `size_t` (or `uint64_t`) flag `name`; `None` when the JVM has no
    /// such flag.
    pub fn u64_flag(&self, memory: &impl Memory, name: &str) -> Result<Option<u64>, HotspotError> {
        let Some(value_at) = self.value_address(memory, name)? else {
            return Ok(None);
        };
        memory.read_u64(value_at).map(Some).map_err(flag_memory)
    }

    /// Where the value of the flag `name` is kept.
    fn value_address(
        &self,
        memory: &impl Memory,
        name: &str,
    ) -> Result<Option<TargetAddr>, HotspotError> {
        let count = memory.read_u64(self.count).map_err(flag_memory)?;
        if count > MAX_FLAGS {
            return Err(HotspotError::Corrupt {
                what: "JVMFlag",
                detail: format!("{count} flags"),
            });
        }
        let table = memory.read_addr(self.flags).map_err(flag_memory)?;
        let bytes = memory
            .read_vec(table, (count * self.size) as usize)
            .map_err(flag_memory)?;
        for entry in bytes.chunks_exact(self.size as usize) {
            let (Some(name_at), Some(value_at)) = (self.name.get(entry), self.addr.get(entry))
            else {
                continue;
            };
            if name_at == 0 {
                continue;
            }
            let Ok(flag) = memory.read_c_string(TargetAddr(name_at), MAX_FLAG_NAME) else {
                continue;
            };
            if flag == name {
                return Ok(Some(TargetAddr(value_at)));
            }
        }
        Ok(None)
    }
}

fn flag_memory(cause: super::memory::MemoryError) -> HotspotError {
    HotspotError::Memory {
        what: "JVMFlag",
        cause,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jit::hotspot::vmstructs::tests::FakeJvm;

    #[test]
    fn reads_a_boolean_flag_by_name() {
        let mut jvm = FakeJvm::new();
        jvm.type_entry("JVMFlag", None, 24);
        jvm.field("JVMFlag", "_addr", "", 0);
        jvm.field("JVMFlag", "_name", "const char*", 8);
        jvm.static_field("JVMFlag", "flags", "JVMFlag*", 0x9000);
        jvm.static_field("JVMFlag", "numFlags", "size_t", 0x9008);
        let (mut memory, symbols) = jvm.build();
        memory.map(TargetAddr(0x9000), vec![0; 16]);
        memory.write_u64(TargetAddr(0x9000), 0xa000);
        memory.write_u64(TargetAddr(0x9008), 2);
        let mut table = vec![0u8; 48];
        table[0..8].copy_from_slice(&0xb000u64.to_le_bytes());
        table[8..16].copy_from_slice(&0xc000u64.to_le_bytes());
        table[24..32].copy_from_slice(&0xb001u64.to_le_bytes());
        table[32..40].copy_from_slice(&0xc020u64.to_le_bytes());
        memory.map(TargetAddr(0xa000), table);
        memory.map(TargetAddr(0xb000), vec![0, 1]);
        let mut names = b"UseSerialGC\0".to_vec();
        names.resize(0x20, 0);
        names.extend_from_slice(b"PreserveFramePointer\0");
        memory.map(TargetAddr(0xc000), names);
        let vm = VmStructs::read(&memory, &symbols).unwrap();
        let layout = FlagLayout::new(&vm).unwrap();
        assert_eq!(
            layout.bool_flag(&memory, "PreserveFramePointer").unwrap(),
            Some(true)
        );
        assert_eq!(
            layout.bool_flag(&memory, "UseSerialGC").unwrap(),
            Some(false)
        );
        assert_eq!(layout.bool_flag(&memory, "NoSuchFlag").unwrap(), None);
        memory.map(TargetAddr(0xd000), 0x4000_0000u64.to_le_bytes().to_vec());
        memory.write_u64(TargetAddr(0xa000), 0xd000);
        assert_eq!(
            layout.u64_flag(&memory, "UseSerialGC").unwrap(),
            Some(0x4000_0000)
        );
        // A crafted count is refused before anything is read for it.
        memory.write_u64(TargetAddr(0x9008), 1 << 40);
        assert!(layout.bool_flag(&memory, "PreserveFramePointer").is_err());
    }
}
