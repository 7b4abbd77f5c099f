fn main() {
    let obj = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf"));
    let mut ebpf = aya::EbpfLoader::new().override_global("TARGET_TGID", &1u32, true).load(obj).unwrap();
    let names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_string()).collect();
    for name in names {
        let prog = ebpf.program_mut(&name).unwrap();
        let r = match prog { aya::programs::Program::UProbe(p) => p.load(), aya::programs::Program::TracePoint(p) => p.load(), _ => panic!() };
        println!("{name}: {:?}", r.map_err(|e| format!("{e:?}")));
    }
}
