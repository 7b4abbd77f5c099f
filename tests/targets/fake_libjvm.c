/*
 * Built as a shared object named libjvm.so: fake_jvm.c maps it executable, which is how
 * leakhound recognises a JVM. It allocates nothing and defines no allocator.
 */
int fake_libjvm_marker(void)
{
    return 42;
}
