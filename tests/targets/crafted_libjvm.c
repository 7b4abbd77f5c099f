// A crafted libjvm.so (crafted_libjvm.c) for leakhound's hostile tests: it exports the symbols of HotSpot's
// self-description (gHotSpotVMStructs and the layout of its entries) with values that a broken
// or malicious target could have. One variant per build, chosen with -DVARIANT_<NAME>; with
// -DSTRIPPED it exports none of them. The entry layouts are JDK 17's: struct entries of 48
// bytes, type entries of 40, constant entries of 16.

#include <stdint.h>
#include <string.h>

#ifndef STRIPPED

struct struct_entry {
    const char *type_name;
    const char *field_name;
    const char *type_string;
    int32_t is_static;
    uint64_t offset;
    void *address;
};

struct type_entry {
    const char *type_name;
    const char *superclass;
    int32_t is_oop, is_integer, is_unsigned;
    uint64_t size;
};

struct constant_entry {
    const char *name;
    uint64_t value;
};

uint64_t gHotSpotVMStructEntryTypeNameOffset = 0;
uint64_t gHotSpotVMStructEntryFieldNameOffset = 8;
uint64_t gHotSpotVMStructEntryTypeStringOffset = 16;
uint64_t gHotSpotVMStructEntryIsStaticOffset = 24;
uint64_t gHotSpotVMStructEntryOffsetOffset = 32;
uint64_t gHotSpotVMStructEntryAddressOffset = 40;
uint64_t gHotSpotVMStructEntryArrayStride = sizeof(struct struct_entry);
uint64_t gHotSpotVMTypeEntryTypeNameOffset = 0;
uint64_t gHotSpotVMTypeEntrySuperclassNameOffset = 8;
uint64_t gHotSpotVMTypeEntryIsOopTypeOffset = 16;
uint64_t gHotSpotVMTypeEntryIsIntegerTypeOffset = 20;
uint64_t gHotSpotVMTypeEntryIsUnsignedOffset = 24;
uint64_t gHotSpotVMTypeEntrySizeOffset = 32;
uint64_t gHotSpotVMTypeEntryArrayStride = sizeof(struct type_entry);
uint64_t gHotSpotVMIntConstantEntryNameOffset = 0;
uint64_t gHotSpotVMIntConstantEntryValueOffset = 8;
uint64_t gHotSpotVMIntConstantEntryArrayStride = sizeof(struct constant_entry);
uint64_t gHotSpotVMLongConstantEntryNameOffset = 0;
uint64_t gHotSpotVMLongConstantEntryValueOffset = 8;
uint64_t gHotSpotVMLongConstantEntryArrayStride = sizeof(struct constant_entry);

// Each table holds only its terminating entry unless a variant says otherwise.
static struct struct_entry structs[1];
static struct type_entry types[1];
static struct constant_entry ints[1], longs[1];

void *gHotSpotVMStructs = structs;
void *gHotSpotVMTypes = types;
void *gHotSpotVMIntConstants = ints;
void *gHotSpotVMLongConstants = longs;

#ifdef VARIANT_ENDLESS
// Far more entries than any JDK has, none of them the terminator.
static struct struct_entry endless[100000];
#endif
#ifdef VARIANT_UNTERMINATED
static char long_name[1 << 16];
#endif

__attribute__((constructor)) static void craft(void) {
#if defined(VARIANT_HUGE_STRIDE)
    gHotSpotVMStructEntryArrayStride = 1ull << 40;
#elif defined(VARIANT_OFFSET_OUTSIDE)
    gHotSpotVMTypeEntrySizeOffset = UINT64_MAX - 4;
#elif defined(VARIANT_ENDLESS)
    for (size_t i = 0; i < sizeof endless / sizeof endless[0]; i++) {
        endless[i].type_name = "CodeBlob";
        endless[i].field_name = "_name";
        endless[i].type_string = "const char*";
    }
    gHotSpotVMStructs = endless;
#elif defined(VARIANT_UNTERMINATED)
    memset(long_name, 'A', sizeof long_name);
    structs[0].type_name = long_name;
    structs[0].field_name = "_name";
#elif defined(VARIANT_NULL_TABLE)
    gHotSpotVMTypes = 0;
#elif defined(VARIANT_WILD_POINTER)
    gHotSpotVMStructs = (void *)0xdead0000;
#endif
    // VARIANT_EMPTY: well-formed but empty tables.
}

#else
// Stripped: a library by the right name with none of the symbols.
int not_a_jvm = 1;
#endif
