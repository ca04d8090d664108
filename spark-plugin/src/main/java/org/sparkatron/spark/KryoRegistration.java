package org.sparkatron.spark;

import com.esotericsoftware.kryo.Kryo;
import org.apache.spark.SparkConf;
import org.apache.spark.serializer.KryoRegistrator;
import org.apache.spark.serializer.KryoSerializer;

/**
 * Registers the classes Sparkatron sends through shuffles, so its shuffles work with
 * {@code spark.kryo.registrationRequired=true}. The training shuffles always use Kryo with this
 * registrator ({@link #serializer}), whatever the session's {@code spark.serializer}; users may also add it
 * to their own {@code spark.kryo.registrator}.
 */
public final class KryoRegistration implements KryoRegistrator {
    @Override
    public void registerClasses(Kryo kryo) {
        kryo.register(int[].class);
        kryo.register(float[].class);
        kryo.register(byte[].class);
        kryo.register(long[].class);
        kryo.register(Long.class);
        kryo.register(Integer.class);
    }

    /** A Kryo serializer for the session's conf with this registrator added to any the user set. */
    static KryoSerializer serializer(SparkConf sessionConf) {
        SparkConf c = sessionConf.clone();
        String mine = KryoRegistration.class.getName();
        String existing = c.get("spark.kryo.registrator", "");
        if (!existing.contains(mine)) {
            c.set("spark.kryo.registrator", existing.isEmpty() ? mine : existing + "," + mine);
        }
        return new KryoSerializer(c);
    }
}
